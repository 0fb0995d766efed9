"""The ``physmoe`` command line.

    physmoe simulate OUT_DIR [--num-structures N] [--seed S] [--prior icsd] [--num-proc 2]
                     [--generator pyxtal|fast]
    physmoe train CONFIG.yaml [--any_training_argument VALUE ...]
    physmoe evaluate CHECKPOINT [--dataset PATH|default] [--split test]
    physmoe evaluate CHECKPOINT --real [--conditions clean|lab] [--output metrics.json]
    physmoe predict CHECKPOINT FILE... [--top-k 5] [--wavelength 1.54056] [--min-confidence 0.5]
        [--prior-weight 1]
    physmoe push CHECKPOINT REPO_ID [--private] [--revision BRANCH]

``train`` reads a YAML file of ``ModelArguments``, ``DataArguments``, ``RunArguments`` and
``PhysMoETrainingArguments`` fields (see ``configs/``); every field can be overridden on the
command line (``--num_train_epochs 3``). Tables go to stdout, logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("physmoe")

# Metrics shown first in the summary table, in this order (others follow alphabetically).
_SUMMARY = (
    "top1_accuracy",
    "top5_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "many_shot_accuracy",
    "medium_shot_accuracy",
    "few_shot_accuracy",
    "few_shot_accuracy_ci_low",
    "few_shot_accuracy_ci_high",
    "crystal_system_accuracy",
    "sg_accuracy_given_correct_system",
    "ece",
    "nll",
    "many_shot_num_classes",
    "medium_shot_num_classes",
    "few_shot_num_classes",
    "num_classes_present",
    "num_samples",
)


def _setup_logging(verbose: bool) -> None:
    import transformers

    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("physmoe").setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity(level)


def _metrics_table(metrics: dict, prefix: str, title: str) -> str:
    from .evaluation import format_metrics_table

    plain = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
    # The summary, then the rest (reference buckets, per-expert ...) in a stable order.
    ordered = {k: plain[k] for k in _SUMMARY if k in plain}
    skipped = ("runtime", "samples_per_second", "steps_per_second")
    ordered.update(
        {k: v for k, v in sorted(plain.items()) if k not in ordered and k not in skipped}
    )
    return format_metrics_table(ordered, title=title)


def _confused_pairs_table(pairs: list[dict]) -> str:
    lines = [
        "hard-negative miner: most-confused pairs (decayed training counts)",
        f"{'true space group':<22}{'predicted as':<22}{'count':>8}",
    ]
    lines += [f"{pair['true']:<22}{pair['predicted']:<22}{pair['count']:>8.1f}" for pair in pairs]
    return "\n".join(lines)


# -- simulate -----------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from .data.generate import generate_dataset

    dataset = generate_dataset(
        args.out_dir,
        args.num_structures,
        seed=args.seed,
        prior=args.prior,
        num_proc=args.num_proc,
        shard_size=args.shard_size,
        max_atoms=args.max_atoms,
        overwrite=args.overwrite,
        generator=args.generator,
    )
    print(f"dataset written to {Path(args.out_dir) / 'dataset'}")
    print(f"{'split':<12}{'structures':>12}{'space groups':>14}")
    for split, part in dataset.items():
        print(f"{split:<12}{len(part):>12}{len(set(part['space_group'])):>14}")
    return 0


# -- train --------------------------------------------------------------------------------------


class _ConfigError(ValueError):
    """A training config that cannot be used (printed as ``error: ...``, exit status 2)."""


def _train(argv: Sequence[str]) -> int:
    from transformers import HfArgumentParser

    from .training import PhysMoETrainingArguments
    from .workflow import DataArguments, ModelArguments, RunArguments, train_and_evaluate

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, RunArguments, PhysMoETrainingArguments)
    )
    parser.prog = "physmoe train CONFIG.yaml"
    if argv[:1] in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    if not argv or argv[0].startswith("-"):
        print(
            "usage: physmoe train CONFIG.yaml [--field value ...]  "
            "(physmoe train --help lists the fields)",
            file=sys.stderr,
        )
        return 2
    config_path, overrides = Path(argv[0]), list(argv[1:])
    try:
        settings = _train_settings(config_path, {action.dest for action in parser._actions})
    except _ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser.set_defaults(**settings)
    chose_tqdm = "disable_tqdm" in settings or any(
        argument.split("=")[0] == "--disable_tqdm" for argument in overrides
    )
    if not chose_tqdm and not sys.stderr.isatty():
        # A progress bar redrawn into a log file is one line per step: log summaries instead
        # (every logging_steps), as the Trainer does when its bar is off.
        parser.set_defaults(disable_tqdm=True)
    model_args, data_args, run_args, training_args = _parse_with_precision(
        parser, settings, overrides
    )
    results = train_and_evaluate(model_args, data_args, run_args, training_args)
    if training_args.process_index == 0:
        _print_run(results, run_args, training_args.output_dir)
    return 0


def _train_settings(config_path: Path, known: set[str]) -> dict:
    """The YAML config as a dict of argument names to values (``model_overrides`` as JSON)."""
    import yaml

    if config_path.is_dir():
        raise _ConfigError(f"config file {config_path} is a folder, not a YAML file")
    if not config_path.is_file():
        raise _ConfigError(f"config file {config_path} not found")
    try:
        with open(config_path, encoding="utf-8") as handle:
            settings = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{config_path}:{mark.line + 1}:{mark.column + 1}" if mark else str(config_path)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise _ConfigError(f"{where}: invalid YAML: {detail}") from None
    except UnicodeDecodeError as error:
        raise _ConfigError(f"{config_path} is not UTF-8 text: {error}") from None
    if not isinstance(settings, dict):
        raise _ConfigError(f"{config_path} must hold a mapping of argument names to values")
    if isinstance(settings.get("model_overrides"), dict):
        settings["model_overrides"] = json.dumps(settings["model_overrides"])
    unknown = sorted(set(settings) - known)
    if unknown:
        raise _ConfigError(f"{config_path}: unknown settings {unknown}")
    return settings


def _parse_with_precision(parser, settings: dict, overrides: list[str]) -> tuple:
    """The four argument dataclasses; without an explicit bf16/fp16 choice, with the
    recommended precision of this machine (never breaking a valid config)."""
    from .runtime import automatic_training_precision

    parsed = parser.parse_args_into_dataclasses(args=overrides)
    chose_precision = any(key in settings for key in ("bf16", "fp16")) or any(
        argument.split("=")[0] in ("--bf16", "--fp16") for argument in overrides
    )
    if chose_precision:
        return parsed
    chose_device = "use_cpu" in settings or any(
        argument.split("=")[0].replace("-", "_") == "__use_cpu" for argument in overrides
    )
    automatic = automatic_training_precision(parsed[3].use_cpu, may_set_use_cpu=not chose_device)
    if not automatic:
        return parsed
    # Parsed again: TrainingArguments turns bf16 into its mixed-precision setting in
    # __post_init__, so setting the attribute afterwards would change nothing.
    parser.set_defaults(**automatic)
    try:
        parsed = parser.parse_args_into_dataclasses(args=overrides)
    except ValueError as error:  # never let the automatic choice break a valid config
        logger.warning("bf16 not switched on (%s): training in fp32", error)
        parser.set_defaults(bf16=False, use_cpu=settings.get("use_cpu", False))
        return parser.parse_args_into_dataclasses(args=overrides)
    device = "CPU" if parsed[3].use_cpu else "GPU"
    note = "; use_cpu set: no accelerator here" if "use_cpu" in automatic else ""
    logger.info("bf16 autocast (recommended on this %s)%s", device, note)
    return parsed


def _print_run(results: dict, run_args, output_dir: str) -> None:
    """The test metrics, the temperature, the miner's pairs, and predictions of the run's
    ``predict_files`` by the model reloaded from disk."""
    print(_metrics_table(results, "test_", f"test split ({output_dir})"))
    print(
        f"calibration temperature (fitted on validation): {results['calibration_temperature']:.3f}"
    )
    if results.get("hnm_most_confused_pairs"):
        print(_confused_pairs_table(results["hnm_most_confused_pairs"]))
    print(f"model, card, metrics and plots saved in {output_dir}")
    if run_args.predict_files:
        from .inference import SpaceGroupPredictor, format_predictions

        predictor = SpaceGroupPredictor.from_pretrained(output_dir)  # reload from disk
        print(format_predictions([predictor.predict_file(p) for p in run_args.predict_files]))


# -- evaluate / predict / push ------------------------------------------------------------------


def _evaluate(args: argparse.Namespace) -> int:
    if args.checkpoint is None:  # the checkpoint shipped in the package
        from .inference import default_checkpoint

        args.checkpoint = str(default_checkpoint())
    if args.real:
        from .evaluation.real import evaluate_real_checkpoint, format_real_benchmark

        metrics = evaluate_real_checkpoint(
            args.checkpoint,
            conditions=args.conditions or "clean",
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            seed=args.seed,
        )
        print(format_real_benchmark(metrics, title=f"real-structure benchmark ({args.checkpoint})"))
        if args.output:
            text = json.dumps(metrics, indent=2, allow_nan=False)
            Path(args.output).write_text(text, encoding="utf-8")
        return 0
    if args.conditions is not None:
        raise ValueError("--conditions applies to the real-structure benchmark only: add --real")
    from .workflow import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
    )
    print(
        _metrics_table(
            metrics, f"{args.split}_", f"{args.split} split of {args.dataset} ({args.checkpoint})"
        )
    )
    if args.output:
        Path(args.output).write_text(
            json.dumps(metrics, indent=2, allow_nan=False), encoding="utf-8"
        )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import SpaceGroupPredictor, format_predictions

    checkpoint, files = _predict_model_and_files(args.model, args.inputs)
    predictor = SpaceGroupPredictor.from_pretrained(checkpoint, device=args.device)
    if args.prior_weight is not None:
        config = predictor.model.config
        if config.loss_preset != "balanced_experts":
            raise ValueError(
                f"--prior-weight applies to models trained with loss_preset='balanced_experts'; "
                f"{checkpoint} was trained with {config.loss_preset!r}, "
                "whose probabilities already "
                "follow the training frequencies"
            )
        if not 0 <= args.prior_weight <= 1:
            raise ValueError(f"--prior-weight must lie in [0, 1], got {args.prior_weight}")
        config.inference_prior_weight = args.prior_weight
    results = [
        predictor.predict_file(
            path, wavelength=args.wavelength, top_k=args.top_k, min_confidence=args.min_confidence
        )
        for path in files
    ]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_predictions(results))
    return 0


# Text pattern suffixes: with CIFs and instrument files, a first argument ending so is a file.
_TEXT_PATTERN_SUFFIXES = (".xy", ".xye", ".csv", ".txt", ".dat")


def _predict_model_and_files(model: str | None, inputs: list[str]) -> tuple[str, list[str]]:
    """``physmoe predict [MODEL] FILE...``: the model is ``--model``, else the first of several
    arguments unless it is a file (or named like one), else the shipped checkpoint."""
    from .data.instruments import INSTRUMENT_SUFFIXES
    from .inference import _CIF_SUFFIXES

    first = Path(inputs[0])
    file_suffixes = _CIF_SUFFIXES + _TEXT_PATTERN_SUFFIXES + INSTRUMENT_SUFFIXES
    names_file = first.is_file() or first.suffix.lower() in file_suffixes
    if model is None and len(inputs) > 1 and not names_file:
        model, inputs = inputs[0], inputs[1:]
    elif model is None and first.is_dir():
        raise ValueError(f"{inputs[0]} is a folder: name the files to predict after it")
    if model is None:
        from .inference import default_checkpoint

        model = str(default_checkpoint())
        logger.info("using the shipped pretrained checkpoint %s", model)
    return model, inputs


def _push(args: argparse.Namespace) -> int:
    from .hub import push_checkpoint

    url = push_checkpoint(
        args.checkpoint,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.token,
        include_training_state=args.include_training_state,
    )
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="physmoe", description="Space-group classification from PXRD patterns."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress (INFO) to stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_simulate_command(commands)
    # main() hands "train" to _train's own parser: this entry only lists it in the help.
    commands.add_parser(
        "train", help="train, calibrate and test a model from a YAML config", add_help=False
    )
    _add_evaluate_command(commands)
    _add_predict_command(commands)
    _add_push_command(commands)
    return parser


def _add_simulate_command(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser(
        "simulate", help="generate a long-tailed dataset of random crystals"
    )
    simulate.add_argument("out_dir")
    simulate.add_argument("--num-structures", type=int, default=10_000)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--prior", default="icsd", help="icsd, cod, ccdc or uniform")
    simulate.add_argument("--num-proc", type=int, default=2)
    simulate.add_argument("--shard-size", type=int, default=500)
    simulate.add_argument("--max-atoms", type=int, default=64)
    simulate.add_argument(
        "--generator",
        choices=("pyxtal", "fast"),
        default="pyxtal",
        help="pyxtal (needs physmoe[sim]) or fast (RandomCrystalGenerator, much faster)",
    )
    simulate.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty out_dir of another run"
    )


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    evaluate.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="model folder or Hub id (default: the shipped one)",
    )
    evaluate.add_argument("--dataset", default="default", help="DatasetDict path or 'default'")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--max-samples", type=int, default=None)
    evaluate.add_argument("--output", help="also write the metrics as JSON here")
    evaluate.add_argument(
        "--real",
        action="store_true",
        help="the real-structure benchmark (419 structures shipped with physmoe; a test set only)",
    )
    evaluate.add_argument(
        "--conditions",
        choices=("clean", "lab"),
        default=None,
        help="with --real: clean patterns (default) or fixed-seed laboratory realism",
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="with --real --conditions lab: rendering seed"
    )


def _add_predict_command(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="ranked space groups for CIFs, text patterns (.xy/.xye/.csv) or instrument files "
        "(.xrdml/.brml/.raw/.ras)",
        usage="physmoe predict [MODEL] FILE [FILE ...] [options]",
        description="MODEL (a saved folder or a Hub id; or --model) is optional: without it the "
        "pretrained checkpoint shipped with the package is used.",
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="[MODEL] FILE", help="optional model, then files"
    )
    predict.add_argument("--model", default=None, help="model folder or Hub id (default: shipped)")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument(
        "--wavelength",
        type=float,
        default=None,
        help="Angstrom, for pattern files that do not state it",
    )
    predict.add_argument("--device", default=None)
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="mark a prediction 'uncertain' when its best probability is below this (0-1)",
    )
    predict.add_argument(
        "--prior-weight",
        type=float,
        default=None,
        help=(
            "balanced_experts models: weight of the training frequencies, "
            "0 (balanced, the default) to 1"
        ),
    )


def _add_push_command(commands: argparse._SubParsersAction) -> None:
    push = commands.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    push.add_argument("checkpoint")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None)
    push.add_argument("--commit-message", default="Upload ResNet1D_MoE checkpoint")
    push.add_argument("--token", default=None)
    push.add_argument("--include-training-state", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    try:
        if argv[:1] == ["train"]:
            _setup_logging(True)
            from .runtime import configure_malloc

            configure_malloc()
            return _train(argv[1:])
        args = parser.parse_args(argv)
        _setup_logging(verbose)
        handlers = {
            "simulate": _simulate,
            "evaluate": _evaluate,
            "predict": _predict,
            "push": _push,
        }
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError) as error:
        if verbose:  # -v: the whole traceback
            raise
        # Bad input says what is wrong; a TypeError may also be a bug, so say how to see where.
        hint = " (physmoe -v ... shows the traceback)" if isinstance(error, TypeError) else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
