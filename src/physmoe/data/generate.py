"""Long-tailed synthetic datasets, written as resumable shards.

Structure ``i`` of a run with seed ``s`` comes from pyxtal (:mod:`.pyxtal_generator`, which says
how it depends only on ``(s, i)``) or from the fast generator (:mod:`.random_crystals`); its stick
pattern is simulated at Cu K-alpha1 over 2θ 2-100 deg (:mod:`.dataset`).

Runs write resumable shards: ``out_dir/manifest.json`` (all parameters that define the content),
``out_dir/shards/shard-00000.parquet`` ... (``shard_size`` structures each, written atomically,
with generation statistics in the Parquet metadata) and, when all shards exist,
``out_dir/dataset`` (the split ``DatasetDict``, see :func:`build_dataset_dict`). Worker
processes are started with ``spawn``: call :func:`generate_dataset` under
``if __name__ == "__main__":`` in scripts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from .. import __version__
from ..utils import atomic_path, write_json
from .dataset import (
    FEATURES,
    load_dataset_dict,
    save_dataset_dict,
    split_dataset,
    structure_row,
)
from .priors import resolve_prior
from .pyxtal_generator import GenerationSettings, generate_structure
from .random_crystals import RandomCrystalGenerator
from .symmetry import DEFAULT_SYMPREC

logger = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "build_dataset_dict", "generate_dataset"]


#: Bumped whenever a change makes the same parameters produce different structures.
GENERATOR_VERSION = 1

_MANIFEST = "manifest.json"
_SHARDS = "shards"
_DATASET = "dataset"
_SHARD_METADATA_KEY = b"physmoe_shard"


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class _RunConfig:
    seed: int
    prior: tuple[float, ...]
    settings: GenerationSettings


_WORKER_CONFIG: _RunConfig | None = None


def _init_worker(config: _RunConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config


def _empty_stats() -> dict:
    """Generation statistics of no structures yet (the key order is the shard metadata's)."""
    return {"attempts": 0, "timeouts": 0, "dropped": [], "agree": 0, "seconds": 0.0}


def _add_stats(total: dict, stats: dict) -> None:
    """Add the generation statistics ``stats`` into ``total`` in place."""
    for key in ("attempts", "timeouts", "agree", "seconds"):
        total[key] += stats[key]
    total["dropped"].extend(stats["dropped"])


def _generate_chunk(indices: Sequence[int]) -> tuple[list[dict], dict]:
    """Rows for some structure indices plus their statistics (runs in a worker)."""
    config = _WORKER_CONFIG
    prior = np.asarray(config.prior)
    rows, stats = [], _empty_stats()
    start = time.perf_counter()
    if config.settings.generator == "fast":
        return _generate_fast_chunk(indices, config, rows, stats, start)
    for index in indices:
        generated = generate_structure(config.seed, index, prior, config.settings)
        stats["attempts"] += generated.attempts
        stats["timeouts"] += generated.timeouts
        if generated.crystal is None:
            stats["dropped"].append(int(index))
            continue
        stats["agree"] += int(generated.space_group == generated.requested_space_group)
        rows.append(
            structure_row(
                f"{config.seed}-{index}",
                generated.crystal,
                generated.space_group,
                requested_space_group=generated.requested_space_group,
                source="pyxtal",
                wavelength=config.settings.wavelength,
                two_theta_range=config.settings.two_theta_range,
            )
        )
    stats["seconds"] = time.perf_counter() - start
    return rows, stats


def _generate_fast_chunk(
    indices: Sequence[int], config: _RunConfig, rows: list, stats: dict, start: float
) -> tuple[list[dict], dict]:
    settings = config.settings
    generator = RandomCrystalGenerator(
        prior=np.asarray(config.prior), seed=config.seed, max_atoms=settings.max_atoms
    )
    for crystal in generator.generate(indices):
        stats["attempts"] += crystal.attempts
        stats["agree"] += int(crystal.space_group == crystal.requested_space_group)
        rows.append(
            structure_row(
                f"{config.seed}-{crystal.index}",
                crystal,
                crystal.space_group,
                requested_space_group=crystal.requested_space_group,
                source="random_crystals",
                wavelength=settings.wavelength,
                two_theta_range=settings.two_theta_range,
            )
        )
    stats["seconds"] = time.perf_counter() - start
    return rows, stats


def _shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / _SHARDS / f"shard-{shard:05d}.parquet"


def _shard_range(shard: int, shard_size: int, num_structures: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_structures))


def _write_shard(path: Path, rows: list[dict], stats: dict) -> None:
    table = pa.Table.from_pylist([_arrow_row(row) for row in rows], schema=FEATURES.arrow_schema)
    metadata = dict(table.schema.metadata or {})
    metadata[_SHARD_METADATA_KEY] = json.dumps(stats).encode()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def _arrow_row(row: dict) -> dict:
    return {
        key: value.tolist() if isinstance(value, np.ndarray) else value
        for key, value in row.items()
    }


def _shard_stats(path: Path, expected: range) -> dict | None:
    """The shard's statistics if the file is a complete shard for ``expected``, else None."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        stats = json.loads(metadata[_SHARD_METADATA_KEY])
        num_rows = pq.read_metadata(path).num_rows
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    complete = stats.get("indices") == [expected.start, expected.stop]
    complete = complete and num_rows + len(stats.get("dropped", ())) == len(expected)
    return stats if complete else None


def _manifest(
    seed,
    num_structures,
    prior_name,
    prior,
    shard_size,
    settings,
    validation_fraction,
    test_fraction,
) -> dict:
    import spglib

    versions = {}
    if settings.generator == "pyxtal":
        try:
            import pyxtal
        except ModuleNotFoundError as error:
            raise ImportError(
                "random-crystal generation with pyxtal needs pip install 'physmoe[sim]' "
                "(or use generator='fast')"
            ) from error
        versions["pyxtal_version"] = pyxtal.__version__
    else:
        import moyopy

        versions["moyopy_version"] = moyopy.__version__
    return {
        "format": "physmoe-generate-run",
        "generator_version": GENERATOR_VERSION,
        "physmoe_version": __version__,
        **versions,
        "spglib_version": spglib.__version__,
        "seed": int(seed),
        "num_structures": int(num_structures),
        "prior": prior_name,
        "prior_probabilities": [float(p) for p in prior],
        "shard_size": int(shard_size),
        **{
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(settings).items()
        },
        "validation_fraction": float(validation_fraction),
        "test_fraction": float(test_fraction),
    }


def _write_json(path: Path, content: dict) -> None:
    write_json(path, content)


def _prepare_out_dir(out_dir: Path, manifest: dict, overwrite: bool) -> None:
    """Create, resume or (with ``overwrite``) reset a run directory; refuse anything else."""
    manifest_path = out_dir / _MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{manifest_path} is not valid JSON ({error}); pass overwrite=True"
            ) from error
        if previous == manifest:
            logger.info("resuming the run in %s", out_dir)
            return
        if not overwrite:
            changed = sorted(
                k for k in manifest.keys() | previous.keys() if manifest.get(k) != previous.get(k)
            )
            details = ", ".join(
                f"{k}: {previous.get(k)!r} -> {manifest.get(k)!r}"
                if k != "prior_probabilities"
                else k
                for k in changed
            )
            raise ValueError(
                f"{out_dir} holds a run with different parameters ({details}); resume it with the "
                "same parameters, pass overwrite=True, or choose another out_dir"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"{out_dir} is not empty and is not a physmoe generation run; pass overwrite=True or "
            "choose another out_dir"
        )
    if overwrite:
        # Remove only what a run writes; other files in out_dir are left alone.
        for name in (_SHARDS, _DATASET):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
    (out_dir / _SHARDS).mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)


def generate_dataset(
    out_dir: str | os.PathLike,
    num_structures: int,
    seed: int = 0,
    prior: str | Sequence[float] = "icsd",
    num_proc: int = 2,
    shard_size: int = 500,
    max_atoms: int = 64,
    overwrite: bool = False,
    *,
    prior_smoothing: float = 0.0,
    symprec: float = DEFAULT_SYMPREC,
    max_attempts: int = 10,
    time_limit: float = 10.0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    progress: bool = True,
    generator: str = "pyxtal",
) -> DatasetDict:
    """Generate (or resume) a long-tailed dataset of random crystals and save it as a DatasetDict.

    See the module docstring for the procedure and the on-disk layout. A killed run continues
    where it stopped when called again with the same arguments (``num_proc`` and ``progress`` may
    change); complete shards are kept, incomplete ones regenerated, and the result is identical
    to an uninterrupted run.

    Args:
        out_dir: Run directory (created; must be empty, a run with the same parameters, or
            ``overwrite=True``, which deletes only the run's own files in it).
        num_structures: Structures to generate (structures whose every attempt fails are
            dropped and reported, so the dataset can hold slightly fewer).
        seed: Global seed; structure ``i`` has id ``f"{seed}-{i}"``. Also seeds the split.
        prior: ``"icsd"``, ``"cod"``, ``"ccdc"``, ``"uniform"`` or 230 weights.
        num_proc: Worker processes (1 = generate in this process).
        shard_size: Structures per shard file.
        max_atoms: Most atoms per conventional cell (see :class:`GenerationSettings`).
        overwrite: Replace a run with different parameters, or start a run in a non-empty
            directory (files that are not the run's are left alone). A run with the same
            parameters is resumed either way: regenerating it would give identical content.
        prior_smoothing: Pseudo-count added to every group's count.
        symprec: spglib tolerance in Angstrom.
        max_attempts: Attempts per structure.
        time_limit: Seconds per attempt.
        validation_fraction, test_fraction: Split fractions (see ``dataset.split_indices``).
        progress: Show a progress bar (on a terminal; in a log file none is drawn).
        generator: ``"pyxtal"`` or ``"fast"`` (see :class:`GenerationSettings`).

    Returns:
        The saved ``DatasetDict`` (train / validation / test), loaded from ``out_dir/dataset``.
    """
    _check_positive_int("num_structures", num_structures)
    _check_positive_int("shard_size", shard_size)
    _check_positive_int("num_proc", num_proc)
    out_dir = Path(out_dir)
    settings = GenerationSettings(
        max_atoms=max_atoms,
        symprec=symprec,
        max_attempts=max_attempts,
        time_limit=time_limit,
        generator=generator,
    )
    prior_vector = resolve_prior(prior, prior_smoothing)
    prior_name = prior.lower() if isinstance(prior, str) else "custom"
    manifest = _manifest(
        seed,
        num_structures,
        prior_name,
        prior_vector,
        shard_size,
        settings,
        validation_fraction,
        test_fraction,
    )
    _prepare_out_dir(out_dir, manifest, overwrite)
    if (out_dir / _DATASET).is_dir():
        return load_dataset_dict(out_dir / _DATASET)

    for stray in (out_dir / _SHARDS).glob(".*.tmp-*"):  # left by a killed run
        stray.unlink()
    pending, done = _pending_shards(out_dir, num_structures, shard_size)
    if done:
        logger.info("%d of %d structures already generated in %s", done, num_structures, out_dir)
    config = _RunConfig(seed=int(seed), prior=tuple(prior_vector.tolist()), settings=settings)
    _run_shards(out_dir, config, pending, shard_size, num_structures, num_proc, done, progress)
    return build_dataset_dict(out_dir)


def _check_positive_int(name: str, value) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _pending_shards(out_dir: Path, num_structures: int, shard_size: int) -> tuple[list[int], int]:
    """The shards still to generate (missing or incomplete) and how many structures the
    complete ones cover."""
    num_shards = math.ceil(num_structures / shard_size)
    pending = [
        k for k in range(num_shards)
        if _shard_stats(
            _shard_path(out_dir, k), _shard_range(k, shard_size, num_structures)
        ) is None
    ]  # fmt: skip
    done = sum(
        len(_shard_range(k, shard_size, num_structures))
        for k in set(range(num_shards)) - set(pending)
    )
    return pending, done


def _run_shards(
    out_dir, config, pending, shard_size, num_structures, num_proc, done, progress
) -> None:
    """Generate the pending shards, writing each as soon as all its structures are in."""
    chunk_size = max(1, min(8, shard_size))
    chunks = [
        (shard, range(start, min(start + chunk_size, shard_range.stop)))
        for shard in pending
        for shard_range in [_shard_range(shard, shard_size, num_structures)]
        for start in range(shard_range.start, shard_range.stop, chunk_size)
    ]
    buffers: dict[int, tuple[list[dict], dict]] = {}
    remaining = {shard: len(_shard_range(shard, shard_size, num_structures)) for shard in pending}

    def collect(shard: int, chunk: range, rows: list[dict], stats: dict) -> None:
        shard_rows, shard_stats = buffers.setdefault(shard, ([], _empty_stats()))
        shard_rows.extend(rows)
        _add_stats(shard_stats, stats)
        remaining[shard] -= len(chunk)
        if remaining[shard] == 0:
            shard_range = _shard_range(shard, shard_size, num_structures)
            shard_stats["indices"] = [shard_range.start, shard_range.stop]
            _write_shard(_shard_path(out_dir, shard), shard_rows, shard_stats)
            del buffers[shard]

    tasks = [chunk for _, chunk in chunks]
    with contextlib.ExitStack() as stack:
        if num_proc == 1:
            _init_worker(config)
            results = map(_generate_chunk, tasks)
        else:
            pool = get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(config,))
            results = stack.enter_context(pool).imap(_generate_chunk, tasks)
        bar = stack.enter_context(
            tqdm(
                total=num_structures,
                initial=done,
                unit="structure",
                desc="generating",
                disable=None if progress else True,
            )
        )
        for (shard, chunk), (rows, stats) in zip(chunks, results, strict=True):
            collect(shard, chunk, rows, stats)
            bar.update(len(chunk))


def build_dataset_dict(out_dir: str | os.PathLike) -> DatasetDict:
    """Split the shards of a finished run and save the ``DatasetDict`` to ``out_dir/dataset``.

    Reads the run's parameters from its manifest, checks that every shard is complete, splits
    by structure (stratified by detected space group, see ``dataset.split_indices``) with the
    run's seed, and writes atomically. Run statistics (attempts, timeouts, dropped structures,
    requested-vs-detected agreement) go into ``physmoe_dataset.json``.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / _MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{out_dir} is not a physmoe generation run (no {_MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    if (out_dir / _DATASET).is_dir():
        return load_dataset_dict(out_dir / _DATASET)
    paths, totals = _complete_shards(out_dir, manifest["num_structures"], manifest["shard_size"])
    metadata = _dataset_metadata(manifest, totals)
    _split_and_save(out_dir, paths, manifest, metadata)
    generation = metadata["generation"]
    logger.info(
        "%d structures saved to %s: %d dropped, %d failed attempts (%d timeouts), "
        "%.1f%% requested = detected",
        generation["structures"],
        out_dir / _DATASET,
        len(generation["dropped"]),
        generation["failed_attempts"],
        generation["timeouts"],
        100 * generation["requested_equals_detected"],
    )
    return load_dataset_dict(out_dir / _DATASET)


def _complete_shards(out_dir: Path, num_structures: int, shard_size: int) -> tuple[list[str], dict]:
    """The paths of all the run's shards and their summed statistics; a ValueError naming the
    first shard that is missing or incomplete."""
    paths, totals = [], _empty_stats()
    for shard in range(math.ceil(num_structures / shard_size)):
        path = _shard_path(out_dir, shard)
        stats = _shard_stats(path, _shard_range(shard, shard_size, num_structures))
        if stats is None:
            raise ValueError(
                f"shard {path} is missing or incomplete; run generate_dataset again to finish it"
            )
        paths.append(str(path))
        _add_stats(totals, stats)
    return paths, totals


def _dataset_metadata(manifest: dict, totals: dict) -> dict:
    """The ``physmoe_dataset.json`` content: the run's parameters, statistics and split."""
    generated = manifest["num_structures"] - len(totals["dropped"])
    return {
        "source": "pyxtal",
        "wavelength": manifest["wavelength"],
        "two_theta_range": manifest["two_theta_range"],
        "generation": {
            **{k: v for k, v in manifest.items() if k != "prior_probabilities"},
            "structures": generated,
            "attempts": totals["attempts"],
            "failed_attempts": totals["attempts"] - generated,
            "timeouts": totals["timeouts"],
            "dropped": totals["dropped"],
            "requested_equals_detected": totals["agree"] / max(generated, 1),
            "worker_seconds": totals["seconds"],
        },
        "split": {
            "validation_fraction": manifest["validation_fraction"],
            "test_fraction": manifest["test_fraction"],
            "seed": manifest["seed"],
        },
    }


def _split_and_save(out_dir: Path, paths: list[str], manifest: dict, metadata: dict) -> None:
    """Split the shards at ``paths`` with the run's fractions and seed and save the
    ``DatasetDict`` with ``metadata`` to ``out_dir/dataset``."""
    # The shards are converted to a memory-mapped Arrow file (not held in memory), split, saved.
    cache_dir = out_dir / ".build-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        dataset = Dataset.from_parquet(paths, features=FEATURES, cache_dir=str(cache_dir))
        dataset_dict = split_dataset(
            dataset, manifest["validation_fraction"], manifest["test_fraction"], manifest["seed"]
        )
        save_dataset_dict(dataset_dict, out_dir / _DATASET, metadata)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
