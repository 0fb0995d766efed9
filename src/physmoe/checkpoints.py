"""Whether a ``Trainer`` checkpoint can be resumed from: a run killed while saving leaves a
``checkpoint-N`` folder that lacks files or ends in a truncated one, and resuming from it would
fail or silently restart the optimizer. :class:`~physmoe.training.PhysMoETrainer` and the output
folder rules (:mod:`physmoe.run_outputs`) resume from the last complete one."""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_problem", "last_complete_checkpoint"]


_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is not whole (header unreadable, data shorter than the header
    says), or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length <= 0 or 8 + length > size:
                return f"{path.name} is truncated ({size} bytes)"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as error:
        return f"{path.name} cannot be read ({error})"
    try:
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError):
        return f"{path.name} has a malformed header"
    if 8 + length + max(ends, default=0) > size:
        return f"{path.name} is truncated ({size} bytes, its header needs {8 + length + max(ends)})"
    return None


def checkpoint_problem(
    folder: str | os.PathLike, require_training_state: bool = True
) -> str | None:
    """Why the ``Trainer`` checkpoint ``folder`` cannot be resumed from, or None if it is whole.

    ``Trainer._save_checkpoint`` writes the model (``config.json``, ``model.safetensors``, the
    preprocessor config, ``training_args.bin``), then ``optimizer.pt``, ``scheduler.pt`` and
    ``rng_state*.pth``, and ``trainer_state.json`` last (physmoe's ``physmoe_stream.json``
    follows). A run killed on the way leaves a folder that lacks some of these or ends in a
    truncated one. Required: a ``trainer_state.json`` with a ``global_step``, ``config.json``, the
    weights and ``training_args.bin``; with ``require_training_state`` (the run saves more than the
    model: ``save_only_model=False``) also the optimizer, scheduler and RNG states. Every JSON
    file present must parse, every ``.safetensors`` file must hold the data its header
    announces, every ``.pt``/``.pth``/``.bin`` file (torch's zip format) must be a whole archive.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    names = {path.name for path in folder.iterdir()}
    required = ["trainer_state.json", "config.json", "training_args.bin"]
    if require_training_state:
        # DeepSpeed keeps optimizer and scheduler in global_step*/, sharded runs name them apart.
        deepspeed = any(name.startswith("global_step") for name in names)
        if not deepspeed:
            required += ["scheduler.pt"]
        if not deepspeed and not any(
            name.startswith("optimizer") or name.endswith("-optimizer.pt") for name in names
        ):
            return "no optimizer state (optimizer.pt)"
        if not any(name.startswith("rng_state") and name.endswith(".pth") for name in names):
            return "no RNG state (rng_state.pth)"
    missing = [name for name in required if name not in names]
    if missing:
        return f"no {', '.join(missing)}"
    if "model.safetensors.index.json" in names:
        try:
            index = json.loads((folder / "model.safetensors.index.json").read_text())
            shards = set(index["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"model.safetensors.index.json cannot be read ({error})"
        absent = sorted(shard for shard in shards if shard not in names)
        if absent:
            return f"no weight shard {absent[0]}"
    elif not {"model.safetensors", "pytorch_model.bin"} & names:
        return "no weights (model.safetensors)"
    for name in sorted(names):
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".json"):
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                return f"{name} cannot be read ({error})"
            stepped = isinstance(content, dict) and "global_step" in content
            if name == "trainer_state.json" and not stepped:
                return "trainer_state.json has no global_step"
        elif name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
            if problem:
                return problem
        elif name.endswith((".pt", ".pth", ".bin")):
            try:
                with zipfile.ZipFile(path) as archive:
                    archive.infolist()
            except (OSError, zipfile.BadZipFile) as error:
                return f"{name} is not a whole torch file ({error})"
    return None


def last_complete_checkpoint(
    output_dir: str | os.PathLike, require_training_state: bool = True
) -> str | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the highest ``N`` that is whole
    (:func:`checkpoint_problem`), or None. Incomplete ones, left by a run killed while saving,
    are skipped with a warning that names them (transformers' ``get_last_checkpoint`` would take
    them and every resumed run would fail or silently restart its optimizer)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = []
    for entry in output_dir.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir():
            numbered.append((int(match.group(1)), entry))
    for _, folder in sorted(numbered, key=lambda item: item[0], reverse=True):
        problem = checkpoint_problem(folder, require_training_state)
        if problem is None:
            return str(folder)
        logger.warning(
            "skipping incomplete checkpoint %s (%s): a run was killed while saving it",
            folder,
            problem,
        )
    return None
