"""Long-tail benchmark: Phys-MoE against cross-entropy and logit adjustment on one trunk.

    python scripts/benchmark_longtail.py --scale cpu50k  [--out results/longtail_cpu50k]
    accelerate launch scripts/benchmark_longtail.py --scale gpu [--out results/longtail_gpu]

Every method trains the same trunk on the same ICSD-prior dataset (structure-disjoint,
space-group-stratified splits), with the same augmentation, optimiser and epoch budget; the
checkpoint is chosen on validation balanced accuracy, the temperature fitted on validation, and
the protocol's metrics are reported once on the test split (mean +- sd over seeds). Few-shot
intervals and the paired differences to the baselines are bootstrapped over test structures
(stratified by class, the seed-mean recomputed on each replicate).

Scales (``SCALES``): ``cpu`` (6,000 pyxtal crystals, 15 epochs; methods (a) cross-entropy, one
head; (b) Balanced Softmax, one head; (c) Phys-MoE full loss; (d) without contrast; (e) the
reference's "scheme2" preset; (f) Phys-MoE + HNM + logit adjustment; (g) the best with the
operator-cosine rule matrix, retrained). ``cpu50k`` (issue 12: 50,000 crystals of the fast
generator, 2 epochs with 4 validations each, about 80 minutes on 2 cores; methods (a), (b), (c),
(h) Phys-MoE + HNM and (i) the ``balanced_experts`` preset, then one-term ablations of the best:
without contrast, hierarchy or centre regularisation, HNM switched the other way). Every scale
also reports hierarchical inference soft / hard / none of the best (the same checkpoints), the
real-structure benchmark of every method, and whether issue 12's targets are met. Finished runs
are skipped, so a killed benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from physmoe.evaluation import (
    apply_temperature,
    class_buckets,
    compute_metrics,
    two_stage_bootstrap,
)
from physmoe.training import PhysMoETrainingArguments, class_counts
from physmoe.utils import atomic_open, write_json
from physmoe.workflow import (
    DataArguments,
    ModelArguments,
    RunArguments,
    load_data,
    train_and_evaluate,
)

logger = logging.getLogger("benchmark_longtail")

SINGLE_HEAD = {"num_experts": 1, "tail_expert_ids": [], "hierarchical_inference": "none"}
METHODS = {
    "a_cross_entropy": {"loss_preset": "cross_entropy", **SINGLE_HEAD},
    "b_balanced_softmax": {"loss_preset": "balanced_softmax", **SINGLE_HEAD},
    "c_physmoe": {"loss_preset": "physmoe"},
    "d_physmoe_no_contrast": {"loss_preset": "physmoe_no_contrast"},
    "e_scheme2": {"loss_preset": "scheme2"},
    "f_physmoe_hnm_la": {"loss_preset": "physmoe", "lambda_hnm": 0.1, "tau": 1.0},
    "h_physmoe_hnm": {"loss_preset": "physmoe", "lambda_hnm": 0.1},
    "i_balanced_experts": {"loss_preset": "balanced_experts"},
}
PHYSMOE_METHODS = tuple(name for name in METHODS if not name.startswith(("a_", "b_")))
OPERATOR_COSINE = "g_best_operator_cosine_rules"
BASELINES = ("a_cross_entropy", "b_balanced_softmax")
#: One PhysMoE term switched off (HNM: switched on when the best method lacks it), on top of the
#: Phys-MoE method best on validation.
ABLATIONS = {
    "contrast": {"lambda_scl": 0.0},
    "hierarchy": {"lambda_hier": 0.0},
    "centre": {"lambda_reg": 0.0},
}
HNM_WEIGHT = 0.1
REAL_MAX_SAMPLES = None  # all real structures (the tests use fewer)
HALF_WIDTH = {
    "stem_channels": 16,
    "hidden_sizes": (16, 32, 32, 64, 64, 128, 128),
    "feature_dim": 128,
}
PRIOR_WEIGHT_REPORTED = (
    "top1_accuracy",
    "balanced_accuracy",
    "many_shot_accuracy",
    "medium_shot_accuracy",
    "few_shot_accuracy",
)
REAL_REPORTED = (
    "top1_accuracy",
    "top5_accuracy",
    "balanced_accuracy",
    "crystal_system_accuracy_from_sg",
    "ece",
)
ISSUE12_METHODS = (
    "a_cross_entropy",
    "b_balanced_softmax",
    "c_physmoe",
    "h_physmoe_hnm",
    "i_balanced_experts",
)
REPORTED = (
    "top1_accuracy",
    "top5_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "many_shot_accuracy",
    "medium_shot_accuracy",
    "few_shot_accuracy",
    "crystal_system_accuracy_from_sg",
    "ece",
)


@dataclass(frozen=True)
class Scale:
    preset: str
    model_overrides: dict
    num_structures: int
    epochs: int
    batch_size: int
    learning_rate: float
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    generator: str = "pyxtal"
    evals_per_epoch: int = 1
    operator_cosine: bool = False  # retrain the best with the operator-cosine rule matrix
    ablations: bool = False  # one-term ablations of the best
    dataloader_workers: int = 0  # processes rendering the training patterns


SCALES = {
    # 2 CPU cores, <= 2 hours in total: the small preset on a 0.04-degree grid (2125 points).
    "cpu": Scale(
        "small",
        {"num_points": 2125, "stem_stride": 2},
        6000,
        15,
        64,
        2e-3,
        (0, 1, 2),
        tuple(METHODS)[:6],
        operator_cosine=True,
    ),
    # 2 CPU cores, ~80 minutes: 50,000 crystals of the fast generator on the 2125-point grid, a
    # trunk of half the small preset's width (0.46 M parameters, ~2.8x faster steps), one process
    # rendering patterns beside the training one; 2 epochs with 4 validations each.
    "cpu50k": Scale(
        "small",
        {"num_points": 2125, "stem_stride": 2, **HALF_WIDTH},
        50000,
        2,
        64,
        2e-3,
        (0, 1, 2),
        ISSUE12_METHODS,
        generator="fast",
        evals_per_epoch=4,
        ablations=True,
        dataloader_workers=1,
    ),
    # GPUs: the published architecture on the 8500-point grid.
    "gpu": Scale(
        "reference",
        {},
        50000,
        60,
        128,
        1e-3,
        (0, 1, 2),
        ISSUE12_METHODS,
        generator="fast",
        ablations=True,
    ),
}


def run_method(
    name: str, overrides: dict, seed: int, scale: Scale, dataset: str, out: Path
) -> dict:
    run_dir = out / "runs" / name / f"seed{seed}"
    results_file = run_dir / "all_results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    # Validations spread evenly over training (a fraction of the total steps when several per
    # epoch).
    every = (
        {"eval_strategy": "epoch", "save_strategy": "epoch"}
        if scale.evals_per_epoch == 1
        else {
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": 1 / (scale.epochs * scale.evals_per_epoch),
            "save_steps": 1 / (scale.epochs * scale.evals_per_epoch),
        }
    )
    args = PhysMoETrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=scale.epochs,
        per_device_train_batch_size=scale.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=scale.learning_rate,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        **every,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="balanced_accuracy",
        greater_is_better=True,
        logging_steps=50,
        seed=seed,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=scale.dataloader_workers,
        bf16=_recommended_bf16(),
        use_cpu=not torch.cuda.is_available(),
    )
    if scale.dataloader_workers and not torch.cuda.is_available():
        # One core renders, the other trains: two training threads would wait on the shared core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - scale.dataloader_workers))
    started = time.time()
    results = train_and_evaluate(
        ModelArguments(
            preset=scale.preset, model_overrides=json.dumps({**scale.model_overrides, **overrides})
        ),
        DataArguments(dataset=dataset),
        RunArguments(plots=False, calibrate=True, overwrite_output=True, bootstrap_samples=200),
        args,
    )
    write_json(run_dir / "method.json", {"name": name, "overrides": overrides})
    logger.info(
        "%s seed %d: %.0f s, test balanced accuracy %.4f",
        name,
        seed,
        time.time() - started,
        results["test_balanced_accuracy"],
    )
    return results


def _recommended_bf16() -> bool:
    from physmoe.runtime import recommended_autocast_dtype

    return (
        recommended_autocast_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16
    )


def predictions(
    run_dir: Path,
    dataset: str,
    split: str,
    hierarchical: str | None = None,
    prior_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated logits, system logits, labels) of a finished run on a split, recomputed from the
    saved model (optionally with another hierarchical-inference mode or, for "balanced_experts",
    another ``inference_prior_weight``), cached as .npz."""
    suffix = "" if prior_weight is None else f"_w{prior_weight:g}"
    cache = run_dir / f"predictions_{split}_{hierarchical or 'saved'}{suffix}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["logits"], data["system_logits"], data["labels"]
    from physmoe.training import PhysMoETrainer

    model = _load(run_dir, hierarchical, prior_weight)
    args = PhysMoETrainingArguments(
        output_dir=str(run_dir / "predict_tmp"),
        per_device_eval_batch_size=256,
        report_to=[],
        bf16=_recommended_bf16(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    data, _ = load_data(DataArguments(dataset=dataset))
    trainer = PhysMoETrainer(model, args, train_dataset=data["train"])
    output = trainer.predict(data[split])
    temperature = float(getattr(model.config, "calibration_temperature", 1.0) or 1.0)
    logits = apply_temperature(output.predictions[0].astype(np.float32), temperature)
    with atomic_open(cache, "wb") as handle:  # a killed run leaves no torn cache
        np.savez_compressed(
            handle, logits=logits, system_logits=output.predictions[2], labels=output.label_ids
        )
    return logits, output.predictions[2], output.label_ids


def _load(run_dir: Path, hierarchical: str | None = None, prior_weight: float | None = None):
    from physmoe import ResNet1D_MoE

    model = ResNet1D_MoE.from_pretrained(run_dir)
    if hierarchical is not None:
        model.config.hierarchical_inference = hierarchical
    if prior_weight is not None:
        model.config.inference_prior_weight = prior_weight
    return model


def class_mean_accuracy(correct: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean over ``classes`` of each class's accuracy; ``correct`` [..., N] -> [...]."""
    return np.mean([correct[..., labels == c].mean(-1) for c in classes], axis=0)


def extra_runs(scale: Scale, best: str | None) -> dict[str, dict]:
    """The runs built on the best Phys-MoE method: the operator-cosine rule matrix and the
    one-term ablations (HNM switched off when the best uses it, otherwise on)."""
    if best is None:
        return {}
    base = METHODS[best]
    runs = (
        {OPERATOR_COSINE: {**base, "rule_matrix": "operator_cosine"}}
        if scale.operator_cosine
        else {}
    )
    if scale.ablations:
        for term, change in ABLATIONS.items():
            runs[f"x_best_without_{term}"] = {**base, **change}
        # Without the hierarchical loss the crystal-system head is untrained: infer without it.
        runs["x_best_without_hierarchy"]["hierarchical_inference"] = "none"
        uses_hnm = bool(base.get("lambda_hnm"))
        runs["x_best_without_hnm" if uses_hnm else "x_best_with_hnm"] = {
            **base,
            "lambda_hnm": 0.0 if uses_hnm else HNM_WEIGHT,
        }
    return runs


def _table(out: Path, names: list[str], scale: Scale) -> dict:
    """Mean +- sd over seeds of every finished method (all seeds done)."""
    table = {}
    for name in names:
        runs = [out / "runs" / name / f"seed{s}" / "all_results.json" for s in scale.seeds]
        if not all(r.exists() for r in runs):
            continue
        results = [json.loads(r.read_text()) for r in runs]
        table[name] = {m: _mean_sd([r.get(f"test_{m}") for r in results]) for m in REPORTED}
        table[name]["validation_balanced_accuracy"] = _mean_sd(
            [r["validation_balanced_accuracy"] for r in results]
        )
        table[name]["train_runtime_s"] = _mean_sd(
            [_train_runtime(out / "runs" / name / f"seed{s}") for s in scale.seeds]
        )
    return table


def best_physmoe(out: Path, scale: Scale) -> str | None:
    table = _table(out, list(scale.methods), scale)
    candidates = [name for name in PHYSMOE_METHODS if name in table]
    return (
        max(candidates, key=lambda name: table[name]["validation_balanced_accuracy"][0])
        if candidates
        else None
    )


def real_metrics(run_dir: Path, prior_weight: float | None = None) -> dict:
    """The real-structure benchmark (clean patterns) of a finished run, cached as JSON."""
    cache = run_dir / (
        "real_benchmark_clean.json"
        if prior_weight is None
        else f"real_benchmark_clean_w{prior_weight:g}.json"
    )
    if not cache.exists():
        from physmoe.evaluation.real import run_real_benchmark

        model = _load(run_dir, prior_weight=prior_weight)
        write_json(
            cache, run_real_benchmark(model, conditions="clean", max_samples=REAL_MAX_SAMPLES)
        )
    return json.loads(cache.read_text())


def summarise(
    out: Path, dataset: str, scale_name: str, scale: Scale, train_counts: np.ndarray
) -> dict:
    best = best_physmoe(out, scale)
    table = _table(out, list(scale.methods) + list(extra_runs(scale, best)), scale)

    # Bootstrap: few-shot and balanced accuracy of the seed mean, and paired differences.
    buckets = class_buckets(train_counts)
    names = list(table)
    labels = predictions(out / "runs" / names[0] / f"seed{scale.seeds[0]}", dataset, "test")[2]
    correct = np.stack(
        [
            np.stack(
                [
                    predictions(out / "runs" / name / f"seed{s}", dataset, "test")[0].argmax(-1)
                    == labels
                    for s in scale.seeds
                ]
            )
            for name in names
        ]
    ).astype(np.float64)  # [M, S, N]
    present = np.unique(labels)
    groups = {"few": present[buckets["few_shot"][present]], "balanced": present}
    point = {
        k: class_mean_accuracy(correct, labels, classes).mean(-1) for k, classes in groups.items()
    }  # [M]
    boot = {
        k: two_stage_bootstrap(correct, labels, classes, 1000, seed=0).mean(-1)
        for k, classes in groups.items()
    }  # [R, M] seed means
    intervals = {
        name: {
            k: (float(np.percentile(boot[k][:, m], 2.5)), float(np.percentile(boot[k][:, m], 97.5)))
            for k in groups
        }
        for m, name in enumerate(names)
    }
    pairs = [
        (name, base)
        for name in names
        if name not in BASELINES
        for base in BASELINES
        if base in table
    ]
    pairs += [(name, best) for name in names if name.startswith("x_") or name == OPERATOR_COSINE]
    differences = {}
    for name, base in pairs:
        i, j = names.index(name), names.index(base)
        for k in groups:
            diff = boot[k][:, i] - boot[k][:, j]
            differences[f"{name} - {base} ({k})"] = (
                float(point[k][i] - point[k][j]),
                float(np.percentile(diff, 2.5)),
                float(np.percentile(diff, 97.5)),
            )
    logits = {
        name: np.stack(
            [predictions(out / "runs" / name / f"seed{s}", dataset, "test")[0] for s in scale.seeds]
        )
        for name in names
    }

    # Hierarchical inference of the best Phys-MoE variant (same checkpoints, inference only).
    hierarchy = {}
    if best is not None:
        for mode in ("soft", "hard", "none"):
            rows: list[dict] = []
            for s in scale.seeds:
                run_dir = out / "runs" / best / f"seed{s}"
                rows.append(
                    {
                        split: _metrics(run_dir, dataset, split, mode, train_counts)
                        for split in ("validation", "test")
                    }
                )
            hierarchy[mode] = {
                f"{split}_{m}": _mean_sd([r[split].get(m) for r in rows])
                for split in ("validation", "test")
                for m in (
                    "top1_accuracy",
                    "balanced_accuracy",
                    "few_shot_accuracy",
                    "crystal_system_accuracy_from_sg",
                )
            }
    # "balanced_experts" runs at both ends of inference_prior_weight (same checkpoints).
    prior_weighting = {}
    for name in names:
        config = json.loads(
            (out / "runs" / name / f"seed{scale.seeds[0]}" / "config.json").read_text()
        )
        if config["loss_preset"] == "balanced_experts":
            for weight in (0.0, 1.0):
                # The saved weight's predictions are the saved ones: reuse their caches.
                changed = None if weight == config.get("inference_prior_weight", 0.0) else weight
                rows = [
                    (
                        _metrics(
                            out / "runs" / name / f"seed{s}",
                            dataset,
                            "test",
                            None,
                            train_counts,
                            changed,
                        ),
                        real_metrics(out / "runs" / name / f"seed{s}", changed),
                    )
                    for s in scale.seeds
                ]
                prior_weighting[f"{name} (w={weight:g})"] = {
                    **{m: _mean_sd([r[0].get(m) for r in rows]) for m in PRIOR_WEIGHT_REPORTED},
                    "real_top1_accuracy": _mean_sd([r[1]["top1_accuracy"] for r in rows]),
                }
    # Real structures (test only), every method of the scale's list and the best's variants.
    real = {
        name: {
            m: _mean_sd(
                [real_metrics(out / "runs" / name / f"seed{s}").get(m) for s in scale.seeds]
            )
            for m in REAL_REPORTED
        }
        for name in names
    }
    sizes = {
        split: int(len(data_split))
        for split, data_split in load_data(DataArguments(dataset=dataset))[0].items()
    }
    sizes["train_classes"] = int((train_counts > 0).sum())
    sizes["train_few_shot_classes"] = int(((train_counts > 0) & (train_counts < 20)).sum())
    summary = {
        "scale": scale_name,
        "scale_settings": scale.__dict__,
        "dataset": dataset,
        "split_sizes": sizes,
        "table": table,
        "intervals": intervals,
        "differences": differences,
        "best_physmoe": best,
        "hierarchical_inference": hierarchy,
        "real": real,
        "inference_prior_weight": prior_weighting,
        "targets": _targets(best, table, differences),
    }
    write_json(out / "results.json", summary)
    with atomic_open(out / "results.md") as handle:
        handle.write(markdown(summary))
    _plots(out, table, scale, train_counts, logits, labels, best)
    return summary


def _targets(best: str | None, table: dict, differences: dict) -> dict:
    """Issue 12's targets for the best Phys-MoE method: beats Balanced Softmax on balanced and
    few-shot accuracy with the paired 95% interval above zero; many-shot within 2 points of CE."""
    if best is None or not all(b in table for b in BASELINES):
        return {}
    targets = {
        k: differences[f"{best} - b_balanced_softmax ({k})"][1] > 0 for k in ("balanced", "few")
    }
    many = table[best]["many_shot_accuracy"], table["a_cross_entropy"]["many_shot_accuracy"]
    targets["many_shot_within_2_points_of_ce"] = (
        None if None in many else bool(many[0][0] >= many[1][0] - 0.02)
    )
    return {
        f"beats_balanced_softmax_{k}" if k in ("balanced", "few") else k: v
        for k, v in targets.items()
    }


def _train_runtime(run_dir: Path) -> float | None:
    history = json.loads((run_dir / "log_history.json").read_text())
    return next(
        (entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None
    )


def _mean_sd(values: list) -> tuple[float, float] | None:
    """Mean and sample standard deviation over seeds, or None when a seed lacks the metric
    (an empty bucket)."""
    if any(v is None for v in values):
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _metrics(
    run_dir: Path,
    dataset: str,
    split: str,
    mode: str | None,
    train_counts: np.ndarray,
    prior_weight: float | None = None,
) -> dict:
    logits, system_logits, labels = predictions(run_dir, dataset, split, mode, prior_weight)
    return compute_metrics(
        logits, labels, train_class_counts=train_counts, crystal_system_logits=system_logits
    )


def _cell(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def markdown(summary: dict) -> str:
    s = summary["scale_settings"]
    sizes = summary["split_sizes"]
    lines = [
        f"### Long-tail benchmark ({summary['scale']} scale)",
        "",
        f"Preset `{s['preset']}` with overrides `{json.dumps(s['model_overrides'])}`; "
        f"ICSD-prior dataset `{summary['dataset']}` ({sizes['train']} / {sizes['validation']} "
        f"/ {sizes['test']} train / validation / test structures, {sizes['train_classes']} "
        f"space groups in training, {sizes.get('train_few_shot_classes', '?')} of them with < "
        f"20 structures; generator `{s.get('generator', 'pyxtal')}`); {s['epochs']} epochs, "
        f"batch {s['batch_size']}, AdamW lr {s['learning_rate']}, seeds {list(s['seeds'])}. "
        "Test split, checkpoint chosen on validation balanced accuracy, temperature fitted on "
        "validation; mean ± sd over seeds; few-shot = classes with < 20 training structures; "
        "crystal system = the system of the predicted space group (the single-head baselines "
        "have no trained system head). Intervals: 95% two-stage bootstrap of the seed mean "
        "over test classes and the structures within them.",
        "",
        (
            "| method | top-1 | top-5 | balanced [95% CI] | macro-F1 | many-shot | medium-shot | "
            "few-shot [95% CI] | crystal system | ECE | train time (s) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["table"].items():
        cells = []
        for metric in REPORTED:
            cell = _cell(row[metric])
            bucket = {"few_shot_accuracy": "few", "balanced_accuracy": "balanced"}.get(metric)
            if bucket and name in summary["intervals"]:
                low, high = summary["intervals"][name][bucket]
                cell += f" [{low:.3f}, {high:.3f}]"
            cells.append(cell)
        runtime = row.get("train_runtime_s")
        cells.append("-" if runtime is None else f"{runtime[0]:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Validation balanced accuracy (what chooses the defaults): "
        + ", ".join(
            f"{name} {_cell(row['validation_balanced_accuracy'])}"
            for name, row in summary["table"].items()
        )
        + ".",
    ]
    if summary["differences"]:
        lines += [
            "",
            "Paired differences on the test split (seed means; 95% two-stage bootstrap interval):",
            "",
            "| comparison | difference | 95% CI |",
            "|---|---|---|",
        ]
        for key, (point, low, high) in summary["differences"].items():
            lines.append(f"| {key} | {point:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    if summary.get("real"):
        lines += [
            "",
            "Real structures (419 experimental CIFs, clean simulated patterns; test only, never "
            "trained or tuned on; `physmoe evaluate --real` on each seed's checkpoint):",
            "",
            "| method | top-1 | top-5 | balanced | crystal system | ECE |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in summary["real"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(row[m]) for m in REAL_REPORTED) + " |")
    if summary.get("inference_prior_weight"):
        lines += [
            "",
            "`balanced_experts` checkpoints with the training prior added back at inference "
            "(`inference_prior_weight` w: 0 balanced, the default; 1 the training frequencies), "
            "test split and real structures:",
            "",
            "| run (w) | top-1 | balanced | many-shot | medium-shot | few-shot | real top-1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in summary["inference_prior_weight"].items():
            cells = [_cell(row[m]) for m in PRIOR_WEIGHT_REPORTED] + [
                _cell(row["real_top1_accuracy"])
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary.get("targets"):
        verdict = {True: "met", False: "not met", None: "-"}
        lines += [
            "",
            (
                "Issue-12 targets for the best Phys-MoE method on validation "
                f"(`{summary['best_physmoe']}`): "
            )
            + "; ".join(
                f"{k.replace('_', ' ')}: {verdict[v]}" for k, v in summary["targets"].items()
            )
            + ".",
        ]
    if summary["hierarchical_inference"]:
        lines += [
            "",
            f"Hierarchical inference of `{summary['best_physmoe']}` (same checkpoints):",
            "",
            (
                "| mode | validation balanced | test top-1 | test balanced | test few-shot | "
                "test crystal system |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for mode, row in summary["hierarchical_inference"].items():
            lines.append(
                f"| {mode} | {_cell(row['validation_balanced_accuracy'])} | "
                f"{_cell(row['test_top1_accuracy'])} | {_cell(row['test_balanced_accuracy'])} | "
                f"{_cell(row['test_few_shot_accuracy'])} | "
                f"{_cell(row['test_crystal_system_accuracy_from_sg'])} |"
            )
    return "\n".join(lines) + "\n"


def _plots(
    out: Path,
    table: dict,
    scale: Scale,
    train_counts: np.ndarray,
    logits: dict,
    labels: np.ndarray,
    best: str | None,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib missing: no plots")
        return
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in table:
        curves = []
        for s in scale.seeds:
            history = json.loads(
                (out / "runs" / name / f"seed{s}" / "log_history.json").read_text()
            )
            curves.append(
                [
                    (entry["epoch"], entry["eval_balanced_accuracy"])
                    for entry in history
                    if "eval_balanced_accuracy" in entry
                ]
            )
        length = min(map(len, curves))
        mean = np.mean([[value for _, value in c[:length]] for c in curves], axis=0)
        axis.plot([epoch for epoch, _ in curves[0][:length]], mean, label=name)
    axis.set(
        xlabel="epoch",
        ylabel="validation balanced accuracy",
        title=f"Learning curves ({out.name}, mean of seeds)",
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "learning_curves.png", dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    bins = np.array([0, 1, 3, 6, 10, 20, 50, 100, 300, 10_000])
    centres = []
    for name in [n for n in ("a_cross_entropy", "b_balanced_softmax", best) if n in logits]:
        correct = (logits[name].argmax(-1) == labels[None]).mean(0)
        per_class = np.bincount(labels, weights=correct, minlength=len(train_counts)) / np.maximum(
            np.bincount(labels, minlength=len(train_counts)), 1
        )
        present = np.bincount(labels, minlength=len(train_counts)) > 0
        which = np.digitize(train_counts, bins) - 1
        means = [
            per_class[present & (which == b)].mean() if (present & (which == b)).any() else np.nan
            for b in range(len(bins) - 1)
        ]
        centres = [f"{bins[b]}-{bins[b + 1] - 1}" for b in range(len(bins) - 1)]
        axis.plot(range(len(means)), means, marker="o", label=name)
    axis.set_xticks(range(len(centres)), centres, rotation=30)
    axis.set(
        xlabel="training structures per class",
        ylabel="test class-mean accuracy",
        title="Per-class accuracy by training frequency",
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "per_class_accuracy.png", dpi=120)
    plt.close(figure)


def run_benchmark(
    scale: Scale,
    scale_name: str,
    out: Path,
    dataset: str | None = None,
    methods: list[str] | None = None,
    num_proc: int = 2,
) -> dict:
    """Generate the dataset (unless ``dataset`` names one), train every run not yet finished in
    ``out/runs`` (``methods``: a subset, default all of the scale's and the extra runs), and
    write ``out/results.{json,md}`` and the plots. Returns the summary."""
    known = (
        set(METHODS)
        | {OPERATOR_COSINE}
        | {f"x_best_without_{t}" for t in (*ABLATIONS, "hnm")}
        | {"x_best_with_hnm"}
    )
    if methods is not None and set(methods) - known:
        raise ValueError(
            f"unknown methods {sorted(set(methods) - known)}; choose from {sorted(known)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        from physmoe.data.generate import generate_dataset

        generate_dataset(
            out / "data",
            scale.num_structures,
            seed=0,
            prior="icsd",
            num_proc=num_proc,
            generator=scale.generator,
        )
        dataset = str(out / "data")
    data, _ = load_data(DataArguments(dataset=dataset))
    train_counts = class_counts(data["train"]["space_group"])
    for seed in scale.seeds:  # seed-major order: a partial run already has every method once
        for name in scale.methods:
            if methods is None or name in methods:
                run_method(name, METHODS[name], seed, scale, dataset, out)
    # Then the runs built on the best Phys-MoE method (known once its seeds are done).
    extras = extra_runs(scale, best_physmoe(out, scale))
    for seed in scale.seeds:
        for name, overrides in extras.items():
            if methods is None or name in methods:
                run_method(name, overrides, seed, scale, dataset, out)
    return summarise(out, dataset, scale_name, scale, train_counts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu50k")
    parser.add_argument(
        "--out", default=None, help="results folder (default results/longtail_<scale>)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="existing physmoe DatasetDict (default: generated into OUT/data)",
    )
    parser.add_argument("--methods", nargs="*", default=None, help="subset of methods to run")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--num-proc", type=int, default=2, help="processes for dataset generation")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    scale = SCALES[args.scale]
    if args.seeds:
        scale = Scale(**{**scale.__dict__, "seeds": tuple(args.seeds)})
    if args.epochs:
        scale = Scale(**{**scale.__dict__, "epochs": args.epochs})
    started = time.time()
    summary = run_benchmark(
        scale,
        args.scale,
        Path(args.out or f"results/longtail_{args.scale}"),
        args.dataset,
        args.methods,
        args.num_proc,
    )
    print(markdown(summary))
    print(
        f"total {time.time() - started:.0f} s; results in "
        f"{args.out or f'results/longtail_{args.scale}'}/results.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
