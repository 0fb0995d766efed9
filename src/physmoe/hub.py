"""Publishing checkpoints on the Hugging Face Hub: which files a checkpoint needs, and the push.

A physmoe checkpoint folder holds ``config.json``, ``model.safetensors`` (weights and the hard
negative miner's state), ``preprocessor_config.json`` (the 2θ grid and wavelength the model reads)
and a ``README.md`` model card (written by :func:`physmoe.model_card.write_model_card`, also
importable from here). :func:`check_checkpoint_location` checks a folder or Hub id before it is
loaded. :func:`push_checkpoint` uploads such a folder in one commit, and only the files a user of
the model needs: never a Trainer checkpoint's optimizer or scheduler state unless asked.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import OfflineModeIsEnabled
from transformers.utils import (
    CONFIG_NAME,
    FEATURE_EXTRACTOR_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)

from . import __version__

# The card's constants are unused here but were published in physmoe.hub before the card got its
# own module; importing them keeps `from physmoe.hub import CARD_TAGS` and the like working.
from .model_card import (  # noqa: F401 (re-exports)
    CARD_TAGS,
    DEFAULT_DATASET_NAME,
    DEFAULT_DATASET_TYPE,
    MODEL_CARD_NAME,
    TASK_NAME,
    TEMPLATE_NAME,
    _read_json,
    _render_model_card,
    model_card_template_path,
    write_model_card,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CARD_NAME",
    "MODEL_FILE_PATTERNS",
    "TRAINING_STATE_PATTERNS",
    "check_checkpoint_location",
    "checkpoint_files",
    "model_card_template_path",
    "push_checkpoint",
    "write_model_card",
]

#: Files of a checkpoint folder that a user of the model needs (top level only). ``*.py`` are the
#: configuration/modeling files that ``auto_map`` points to for ``trust_remote_code=True``.
MODEL_FILE_PATTERNS = (
    CONFIG_NAME,
    SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    "model-*-of-*.safetensors",
    FEATURE_EXTRACTOR_NAME,
    MODEL_CARD_NAME,
    "*.py",
)
#: What a Trainer checkpoint adds for resuming; pushed only with ``include_training_state=True``.
TRAINING_STATE_PATTERNS = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
)


def checkpoint_files(
    checkpoint_dir: str | os.PathLike, *, include_training_state: bool = False
) -> list[str]:
    """Names of the files of ``checkpoint_dir`` that :func:`push_checkpoint` uploads.

    Raises:
        FileNotFoundError: ``checkpoint_dir`` is not a directory.
        ValueError: ``config.json`` or the safetensors weights are missing or unreadable, a shard
            named in ``model.safetensors.index.json`` is missing, or a ResNet1D_MoE checkpoint
            lacks ``preprocessor_config.json`` (its grid and wavelength).
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir} does not exist")
    present = sorted(path.name for path in checkpoint_dir.iterdir() if path.is_file())
    patterns = MODEL_FILE_PATTERNS + (TRAINING_STATE_PATTERNS if include_training_state else ())
    selected = [name for name in present if any(fnmatch.fnmatch(name, p) for p in patterns)]

    def missing(what: str) -> ValueError:
        return ValueError(
            f"{checkpoint_dir} is not a loadable checkpoint: {what} (files present: "
            f"{', '.join(present) or 'none'})"
        )

    config = _read_json(checkpoint_dir / CONFIG_NAME)
    if config is None:
        raise missing(f"{CONFIG_NAME} is missing")
    if SAFE_WEIGHTS_NAME in present:
        weight_files = [SAFE_WEIGHTS_NAME]
    elif SAFE_WEIGHTS_INDEX_NAME in present:
        index = _read_json(checkpoint_dir / SAFE_WEIGHTS_INDEX_NAME)
        weight_files = sorted(set(index.get("weight_map", {}).values()))
        absent = [name for name in weight_files if name not in present]
        if not weight_files:
            raise missing(f"{SAFE_WEIGHTS_INDEX_NAME} lists no weight shards")
        if absent:
            raise missing(f"shards named in {SAFE_WEIGHTS_INDEX_NAME} are missing: {absent}")
    else:
        raise missing(
            f"no {SAFE_WEIGHTS_NAME} (weights are published as safetensors only; save with "
            "model.save_pretrained)"
        )
    for name in weight_files:
        _check_safetensors(checkpoint_dir / name)
    if config.get("model_type") == "resnet1d_moe" and FEATURE_EXTRACTOR_NAME not in present:
        raise missing(
            f"{FEATURE_EXTRACTOR_NAME} is missing: users need the grid and wavelength; save it "
            "with XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)"
        )
    return selected


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_checkpoint_location(checkpoint: str | os.PathLike) -> str:
    """Where to load a checkpoint from, checked before ``from_pretrained`` tries it: a local
    folder (returned with ``~`` expanded) or a Hub repository id (returned as is).

    Raises:
        FileNotFoundError: ``no such checkpoint folder: ...`` when ``checkpoint`` does not exist
            locally and is meant as a path (it contains ``\\`` or more than one ``/``, starts
            with ``.``, ``~`` or ``/``, is no valid repository id, or its first part is a local
            folder, as ``outputs`` in ``outputs/mistyped``), or when ``HF_HUB_OFFLINE`` is set.
        ValueError: a local folder without ``config.json``, whose ``config.json`` is no JSON
            object, or whose ``model.safetensors`` is truncated or corrupt; a file instead of a
            folder.
    """
    text = os.fspath(checkpoint)
    path = Path(text).expanduser()
    if path.is_dir():
        present = sorted(item.name for item in path.iterdir())
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(
                f"{path} is not a checkpoint folder: it has no {CONFIG_NAME} (files present: "
                f"{', '.join(present[:20]) or 'none'})"
            )
        _check_config_json(path / CONFIG_NAME)
        for name in (SAFE_WEIGHTS_NAME,):
            if (path / name).is_file():
                _check_safetensors(path / name)
        return str(path)
    if path.exists():
        raise ValueError(
            f"{path} is a file: a checkpoint is a folder with {CONFIG_NAME} and "
            f"{SAFE_WEIGHTS_NAME} (pass the folder)"
        )
    first = Path(text.replace("\\", "/").split("/", 1)[0]).expanduser()
    path_like = (
        isinstance(checkpoint, Path)
        or text.startswith((".", "~", "/"))
        or "\\" in text
        or text.count("/") > 1
        or not _REPO_ID.fullmatch(text)
        or ("/" in text and first.is_dir())
    )
    if path_like:
        raise FileNotFoundError(f"no such checkpoint folder: {path}")
    if hub_constants.is_offline_mode():
        raise FileNotFoundError(
            f"no such checkpoint folder: {path} (and HF_HUB_OFFLINE is set, so it is not looked "
            "up as a Hugging Face Hub repository)"
        )
    return text


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload ResNet1D_MoE checkpoint",
    token: str | None = None,
    revision: str | None = None,
    include_training_state: bool = False,
) -> str:
    """Upload a saved checkpoint folder to the Hub in one commit.

    Creates the repository if needed (``private`` applies only then) and the branch
    ``revision`` if it does not exist. Uploads the files of :func:`checkpoint_files`; a folder
    without ``README.md`` gets a card as from :func:`write_model_card` without evaluation results
    (the checkpoint folder itself is not modified).

    Args:
        checkpoint_dir: Folder written by ``save_pretrained`` (or a Trainer checkpoint).
        repo_id: ``namespace/name``, or ``name`` for the token's own namespace.
        private: Create the repository as private.
        commit_message: Summary of the commit.
        token: Hub token (default: ``HF_TOKEN`` or the stored login).
        revision: Branch to commit to (default ``main``).
        include_training_state: Also upload optimizer, scheduler, RNG and trainer state.

    Returns:
        URL of the commit.

    Raises:
        OfflineModeIsEnabled: ``HF_HUB_OFFLINE`` is set.
        ConnectionError: the Hub cannot be reached (names the repository and the cause).
        FileNotFoundError, ValueError: see :func:`checkpoint_files`; an invalid ``repo_id``.
    """
    if hub_constants.is_offline_mode():
        raise OfflineModeIsEnabled(
            f"cannot push {checkpoint_dir} to {repo_id}: Hugging Face Hub offline mode is on "
            "(HF_HUB_OFFLINE=1); unset it to publish"
        )
    files = checkpoint_files(checkpoint_dir, include_training_state=include_training_state)
    checkpoint_dir = Path(checkpoint_dir)
    api = HfApi(token=token, library_name="physmoe", library_version=__version__)
    try:
        return _push_files(
            api,
            checkpoint_dir,
            files,
            repo_id,
            private=private,
            revision=revision,
            commit_message=commit_message,
        )
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise ConnectionError(
            f"cannot push {checkpoint_dir} to {repo_id}: the Hugging Face Hub at {api.endpoint} "
            f"could not be reached ({type(error).__name__}: {error or 'no details'})"
        ) from error


# Connection failures of the HTTP clients huggingface_hub has used (httpx and its forks:
# TransportError and subclasses; requests: ConnectionError, Timeout), matched by class name.
_NETWORK_ERRORS = {"TransportError", "ConnectionError", "Timeout"}


def _is_network_error(error: BaseException) -> bool:
    return any(cls.__name__ in _NETWORK_ERRORS for cls in type(error).__mro__)


def _push_files(
    api: HfApi,
    checkpoint_dir: Path,
    files: list[str],
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    commit_message: str,
) -> str:
    """The requests of :func:`push_checkpoint`; returns the commit's URL."""
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and revision != hub_constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)

    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(checkpoint_dir / name))
        for name in files
    ]
    if MODEL_CARD_NAME not in files:
        logger.warning(
            "%s has no %s: pushing a model card without evaluation results; write one with "
            "physmoe.hub.write_model_card(..., metrics=...) to publish test metrics",
            checkpoint_dir,
            MODEL_CARD_NAME,
        )
        card = _render_model_card(
            checkpoint_dir,
            metrics=None,
            longtail_table=None,
            training_data=None,
            conditions=None,
            base_model=None,
            template_path=None,
            model_name=repo_id.split("/")[-1],
            repo_id=repo_id,
        )
        operations.append(
            CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=card.encode())
        )
    commit = api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, revision=revision
    )
    logger.info(
        "pushed %d files of %s to %s: %s",
        len(operations),
        checkpoint_dir,
        repo_id,
        commit.commit_url,
    )
    return commit.commit_url


def _check_config_json(path: Path) -> None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} must hold a JSON object (the model settings), "
            f"got a JSON {type(config).__name__}"
        )


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt? save or download "
            f"it again): {error}"
        ) from error
