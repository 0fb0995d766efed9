"""The model card of a physmoe checkpoint: ``README.md``, rendered from the package's template.

:func:`write_model_card` renders the card from the package's Jinja template with
``huggingface_hub.ModelCard``, so its metadata carries a valid ``model-index`` with the test
metrics. The architecture table and the input-grid line are read from the checkpoint folder
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import CONFIG_NAME, FEATURE_EXTRACTOR_NAME, SAFE_WEIGHTS_NAME

from . import __version__
from .data.grid import CU_KA1, TwoThetaGrid
from .evaluation import metric_display_name, metrics_markdown_table
from .utils import atomic_open

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CARD_NAME",
    "model_card_template_path",
    "write_model_card",
]

MODEL_CARD_NAME = "README.md"
TEMPLATE_NAME = "model_card.md"

CARD_TAGS = [
    "physmoe",
    "resnet1d_moe",
    "powder-x-ray-diffraction",
    "pxrd",
    "crystallography",
    "space-group-classification",
    "mixture-of-experts",
]
DEFAULT_DATASET_TYPE = "synthetic-pxrd"
DEFAULT_DATASET_NAME = "Synthetic PXRD patterns"
TASK_NAME = "Space-group classification"

# Trainer.evaluate() adds these to its metrics; they describe the run, not the model.
_BOOKKEEPING_KEYS = {
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "jit_compilation_time",
}
# Counts, parameters and per-expert diagnostics of physmoe.evaluation.compute_metrics: shown in
# the table, not model-index scores.
_NOT_A_SCORE = re.compile(
    r"num_\w+|\w+_num_classes|reference_bucket_scale|\w+_ci_(low|high)|loss|expert_\d+_\w+"
)
# model-index metric types with an established Hub id; every other key is its own type.
_MODEL_INDEX_TYPES = {"top1_accuracy": "accuracy", "macro_f1": "f1"}
# Config fields worth a row in the card's architecture table, when the config has them.
_ARCHITECTURE_FIELDS = (
    ("expert_mode", "Expert mode"),
    ("num_experts", "Experts"),
    ("tail_expert_ids", "Tail experts"),
    ("feature_dim", "Feature dimension"),
    ("hierarchical_inference", "Hierarchical inference"),
    ("loss_preset", "Loss"),
    ("preset", "Preset"),
)


def model_card_template_path() -> Path:
    """The Jinja template of the model card, ``physmoe/resources/model_card.md`` (the top-level
    ``model_card.md`` of a checkout is a link to it)."""
    return Path(str(resources.files("physmoe.resources").joinpath(TEMPLATE_NAME)))


def write_model_card(
    save_directory: str | os.PathLike,
    *,
    metrics: Mapping[str, float | int | None] | None = None,
    longtail_table: str | None = None,
    training_data: Mapping[str, object] | None = None,
    conditions: Mapping[str, object] | None = None,
    base_model: str | None = None,
    template_path: str | os.PathLike | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    extra_sections: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``README.md``, the model card, into a saved checkpoint folder.

    Args:
        save_directory: The checkpoint folder. ``config.json``, ``model.safetensors`` and
            ``preprocessor_config.json``, when present, fill the architecture table and the input
            grid.
        metrics: Test-split metrics, e.g. from ``physmoe.evaluation.compute_metrics`` or
            ``Trainer.evaluate(test_set, metric_key_prefix="test")`` (a ``test_`` prefix is
            dropped; ``eval_``/``val_``/``validation_``/``train_`` keys are refused because the
            card's ``model-index`` reports the test split). Values are fractions, not percent.
            Scores become ``model-index`` results; counts (``num_*``, ``*_num_classes``) and
            ``None`` (a bucket with no classes) appear only in the table. The card states that
            the checkpoint was chosen on the validation split: pass test metrics of such a
            checkpoint (docs/evaluation-protocol.md).
        longtail_table: A markdown table of accuracy by training-frequency bucket, embedded as is.
        training_data: Facts about the training data, listed in the card (e.g. ``{"structures":
            12000, "patterns per structure": 8}``). ``dataset_id`` (a Hub dataset id) and
            ``dataset_name`` also name the dataset in ``model-index`` and the card metadata.
        conditions: The simulated measurement conditions (ranges of broadening, noise, ...).
        base_model: Hub id of the checkpoint this one was fine-tuned from.
        template_path: A Jinja template to use instead of :func:`model_card_template_path`.
        model_name: Name in the title and ``model-index`` (default: the folder's name).
        repo_id: Repository id used in the card's code example (default:
            ``your-namespace/<model_name>``).
        extra_sections: Markdown embedded as is after the evaluation results (e.g. a
            real-structure benchmark, the training recipe), starting with its own ``##`` heading.
        overwrite: Replace an existing ``README.md``.

    Returns:
        Path of the written ``README.md``.
    """
    save_directory = Path(save_directory)
    if not save_directory.is_dir():
        raise FileNotFoundError(f"save_directory {save_directory} is not a directory")
    card_path = save_directory / MODEL_CARD_NAME
    if card_path.exists() and not overwrite:
        raise FileExistsError(f"{card_path} exists; pass overwrite=True to replace it")
    card = _render_model_card(
        save_directory,
        metrics=metrics,
        longtail_table=longtail_table,
        training_data=training_data,
        conditions=conditions,
        base_model=base_model,
        template_path=template_path,
        model_name=model_name,
        repo_id=repo_id,
        extra_sections=extra_sections,
    )
    _write_text_atomic(card_path, card)
    logger.info("wrote model card %s", card_path)
    return card_path


def _render_model_card(
    checkpoint_dir: Path,
    *,
    metrics: Mapping[str, object] | None,
    longtail_table: str | None,
    training_data: Mapping[str, object] | None,
    conditions: Mapping[str, object] | None,
    base_model: str | None,
    template_path: str | os.PathLike | None,
    model_name: str | None,
    repo_id: str | None,
    extra_sections: str | None = None,
) -> str:
    """The card's text for ``checkpoint_dir`` (arguments as in :func:`write_model_card`)."""
    for name, text in (("longtail_table", longtail_table), ("extra_sections", extra_sections)):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{name} must be a markdown string, got {type(text)}")
    training_data = _checked_mapping(training_data, "training_data")
    conditions = _checked_mapping(conditions, "conditions")
    model_name = model_name or checkpoint_dir.resolve().name
    test_metrics = _test_metrics(metrics) if metrics is not None else {}
    card_data = ModelCardData(
        library_name="physmoe",
        license="apache-2.0",
        tags=list(CARD_TAGS),
        model_name=model_name,
        base_model=base_model,
        datasets=[training_data["dataset_id"]] if "dataset_id" in training_data else None,
        eval_results=_eval_results(test_metrics, training_data) or None,
    )
    config = _read_json(checkpoint_dir / CONFIG_NAME)
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or model_card_template_path()),
        model_name=model_name,
        repo_id=repo_id or f"your-namespace/{model_name}",
        architecture=_architecture_rows(config, checkpoint_dir),
        input_grid=_input_grid_text(_read_json(checkpoint_dir / FEATURE_EXTRACTOR_NAME) or config),
        training_data=[(key, _format_value(value)) for key, value in training_data.items()],
        conditions=[(key, _format_value(value)) for key, value in conditions.items()],
        metrics_table=metrics_markdown_table(test_metrics) if test_metrics else None,
        longtail_table=longtail_table,
        extra_sections=extra_sections,
        physmoe_version=__version__,
    )
    # Jinja blocks leave runs of blank lines behind; markdown needs at most one.
    return re.sub(r"\n{3,}", "\n\n", str(card)).rstrip() + "\n"


def _eval_results(
    test_metrics: Mapping[str, float | int | None], training_data: Mapping[str, object]
) -> list[EvalResult]:
    """The ``model-index`` results: one per score in ``test_metrics``, on the training data's
    dataset (named by ``dataset_id``/``dataset_name``, else the defaults)."""
    dataset_type = str(training_data.get("dataset_id", DEFAULT_DATASET_TYPE))
    dataset_name = str(
        training_data.get("dataset_name", training_data.get("dataset_id", DEFAULT_DATASET_NAME))
    )
    return [
        EvalResult(
            task_type="other",
            task_name=TASK_NAME,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=_MODEL_INDEX_TYPES.get(key, key),
            metric_name=metric_display_name(key),
            metric_value=value,
            metric_config="macro" if key == "macro_f1" else None,
        )
        for key, value in test_metrics.items()
        if _is_score(key, value)
    ]


def _test_metrics(metrics: Mapping[str, object]) -> dict[str, float | int | None]:
    """Validated test-split metrics: prefix ``test_`` dropped, Trainer bookkeeping removed."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name -> value, got {type(metrics)}")
    cleaned: dict[str, float | int | None] = {}
    for raw_key, value in metrics.items():
        key = str(raw_key).removeprefix("test_")
        if re.match(r"(eval|val|validation|train)_", key):
            raise ValueError(
                f"metric {raw_key!r} is not from the test split: the model card reports test "
                "metrics (use Trainer.evaluate(test_set, metric_key_prefix='test'))"
            )
        if key in _BOOKKEEPING_KEYS:
            continue
        if value is None:
            cleaned[key] = None
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {raw_key!r} must be a real number, got {value!r}")
        elif not math.isfinite(value):
            raise ValueError(f"metric {raw_key!r} is not finite: {value}")
        else:
            cleaned[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return cleaned


def _is_score(key: str, value) -> bool:
    return value is not None and not isinstance(value, int) and not _NOT_A_SCORE.fullmatch(key)


def _checked_mapping(value, name: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(value)}")
    return value


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, numbers.Real) for v in value)
    ):  # a (min, max) range, as MeasurementConditions stores them
        return f"{_format_value(value[0])}–{_format_value(value[1])}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key} = {_format_value(item)}" for key, item in value.items())
    return str(value)


# physmoe.hub.checkpoint_files reads config.json with it too; it lives here because hub imports
# this module, not the reverse.
def _read_json(path: Path) -> dict | None:
    """Parsed JSON object at ``path``; ``None`` when the file does not exist."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _architecture_rows(config: dict | None, save_directory: Path) -> list[tuple[str, str]]:
    if config is None:
        return []
    rows = [("Model type", str(config.get("model_type", "unknown")))]
    id2label = config.get("id2label")
    if id2label:
        rows.append(("Classes", str(len(id2label))))
    rows += [
        (label, _format_value(config[key]))
        for key, label in _ARCHITECTURE_FIELDS
        if config.get(key) is not None
    ]
    weights = save_directory / SAFE_WEIGHTS_NAME
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as tensors:
            count = sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())
        rows.append(("Stored values (parameters and state)", f"{count:,}"))
    return rows


def _input_grid_text(grid_config: dict | None) -> str | None:
    fields = ("two_theta_min", "two_theta_max", "num_points", "wavelength")
    if grid_config is None or any(key not in grid_config for key in fields):
        return None
    grid = TwoThetaGrid.from_config(SimpleNamespace(**{key: grid_config[key] for key in fields}))
    d_min, d_max = grid.d_spacing_range
    source = " (Cu Kα1)" if math.isclose(grid.wavelength, CU_KA1, abs_tol=1e-6) else ""
    return (
        f"2θ from {grid.two_theta_min:g}° to {grid.two_theta_max:g}° (end excluded) in "
        f"{grid.num_points} points of {grid.step:.4g}°, at λ = {grid.wavelength:g} Å{source}: "
        f"d-spacings {d_min:.3f}–{d_max:.2f} Å. Intensities are scaled to a maximum of 1."
    )


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as stream:
        stream.write(text)
