"""The main job through the `physmoe` command: train -> test -> save -> reload -> predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hub_server import hub_server_fixture  # noqa: F401 (provides the hub_server fixture)
from physmoe.cli import main
from physmoe.crystallography import ID2LABEL
from tiny_training import small_embedded_dataset, tiny_train_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """60 embedded structures of 4 groups, built like the default dataset."""
    return small_embedded_dataset(tmp_path_factory.mktemp("data"))


def write_config(path: Path, dataset: Path, output_dir: Path, **extra) -> Path:
    settings = tiny_train_settings(
        dataset, output_dir, **{"num_train_epochs": 2, "bootstrap_samples": 50, **extra}
    )  # extra: None unsets
    path.write_text(yaml.safe_dump(settings))
    return path


def test_train_evaluate_predict_end_to_end(small_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    config = write_config(
        tmp_path / "run.yaml", small_dataset, out, predict_files=[str(EXAMPLES / "TiO2_rutile.cif")]
    )
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr().out
    assert (
        "Top-1 accuracy" in printed
        and "calibration temperature" in printed
        and "TiO2_rutile.cif" in printed
    )

    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "all_results.json",
        "log_history.json",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert saved["calibration_temperature"] == pytest.approx(results["calibration_temperature"])
    assert 0.0 <= results["test_top1_accuracy"] <= 1.0 and results["test_num_samples"] > 0
    card = ModelCard.load(out / "README.md")
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["accuracy"] == pytest.approx(results["test_top1_accuracy"])
    assert "few-shot" in card.text
    assert "Expert 0 top-1 accuracy" in card.text and "expert_0_top1_accuracy" not in reported
    # The miner's most-confused pairs: the off-diagonal maximum of its saved confusion matrix.
    pairs = results["hnm_most_confused_pairs"]
    assert "most-confused pairs" in printed and 0 < len(pairs) <= 10
    confusion = load_file(out / "model.safetensors")[
        "hard_negative_miner.confusion_matrix"
    ].double()
    confusion.fill_diagonal_(0)
    true, predicted = divmod(int(confusion.argmax()), 230)
    assert (pairs[0]["true"], pairs[0]["predicted"]) == (ID2LABEL[true], ID2LABEL[predicted])
    assert pairs[0]["count"] == pytest.approx(float(confusion.max()), rel=1e-6)

    # Reload from disk: evaluation on the test split reproduces the training run's numbers.
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--dataset",
                str(small_dataset),
                "--split",
                "test",
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["test_top1_accuracy"] == pytest.approx(results["test_top1_accuracy"])
    assert evaluated["test_balanced_accuracy"] == pytest.approx(results["test_balanced_accuracy"])

    capsys.readouterr()
    assert (
        main(["predict", str(out), str(EXAMPLES / "NaCl_rocksalt.cif"), "--top-k", "3", "--json"])
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["source"] == "NaCl_rocksalt.cif" and len(answer[0]["candidates"]) == 3


def test_finished_models_are_not_overwritten_and_killed_runs_resume(
    small_dataset, tmp_path, capsys
):
    def config_for(output_dir: Path, name: str, epochs: int = 1) -> Path:
        return write_config(
            tmp_path / name, small_dataset, output_dir, num_train_epochs=epochs, plots=False
        )

    out = tmp_path / "model"
    config = config_for(out, "run.yaml")
    assert main(["train", str(config)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", str(config)]) == 1
    assert "already holds a trained model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    # A mistake in the replacing run's config or data loses nothing: it is checked before any file
    # is touched, and the new run trains beside the old model until it is saved.
    (out / "notes.txt").write_text("mine")
    snapshot = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}

    def siblings():
        return sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("model"))

    for mistake in (["--dataset", str(tmp_path / "no_such_dataset")], ["--augmentation", "bogus"]):
        assert main(["train", str(config), "--overwrite_output", "true", *mistake]) == 1
        assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == snapshot
        assert siblings() == ["model"]
    assert main(["train", str(config), "--overwrite_output", "true", "--seed", "1"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert (out / "notes.txt").read_text() == "mine"  # not a run output: kept
    assert siblings() == ["model"]
    (checkpoint,) = out.glob("checkpoint-*")
    best = json.loads((checkpoint / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert best == str(checkpoint.resolve())  # moved with the run, pointing at its new place

    # A run killed after its first epoch's checkpoint continues from it.
    killed = tmp_path / "killed"
    assert main(["train", str(config_for(killed, "k.yaml"))]) == 0
    (killed / "model.safetensors").unlink()  # as if it had died before saving the final model
    (first_checkpoint,) = killed.glob("checkpoint-*")
    state = (first_checkpoint / "trainer_state.json").read_bytes()
    assert main(["train", str(config_for(killed, "k2.yaml", epochs=2))]) == 0
    # The first epoch was not trained again (its checkpoint is untouched); the second was.
    assert (first_checkpoint / "trainer_state.json").read_bytes() == state
    assert len(list(killed.glob("checkpoint-*"))) == 2 and (killed / "model.safetensors").is_file()


def test_bad_configs_name_the_problem(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"no_such_setting": 1}))
    assert main(["train", str(config)]) == 2
    assert "no_such_setting" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    from physmoe.workflow import DataArguments, load_data

    with pytest.raises(ValueError, match="max_eval_samples must be >= 1, got -5"):
        load_data(DataArguments(max_eval_samples=-5))


def test_train_refuses_mistakes_before_training(tmp_path, capsys):
    """Each used to fail late (after an epoch, or after saving) or with a misleading message."""
    assert main(["train", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    mistakes = [
        (
            {"metric_for_best_model": "bogus"},
            "metric_for_best_model 'bogus' is not an evaluation metric",
        ),
        ({"metric_for_best_model": "balanced_acuracy"}, "did you mean 'balanced_accuracy'"),
        ({"predict_files": [str(tmp_path / "absent.xy")]}, "predict_files: no such file"),
        ({"output_dir": str(tmp_path / "a_file")}, "is a file, not a folder"),
    ]
    for settings, expected in mistakes:
        config = tmp_path / "run.yaml"
        config.write_text(
            yaml.safe_dump({"output_dir": str(tmp_path / "out"), "use_cpu": True, **settings})
        )
        assert main(["train", str(config)]) == 1, settings
        error = capsys.readouterr().err
        assert expected in error and "Traceback" not in error, error
        assert not (tmp_path / "out").exists()
    from physmoe.workflow import _check_metric_name

    for fine in (
        "balanced_accuracy",
        "eval_balanced_accuracy",
        "eval_loss",
        "few_shot_accuracy",
        "expert_3_top1_accuracy",
    ):
        _check_metric_name(fine)


def test_evaluate_real_and_predict_name_broken_models(tmp_path, capsys):
    from tiny_models import tiny_model

    missing = tmp_path / "no_model"
    assert main(["evaluate", str(missing), "--real"]) == 1
    assert f"error: no such checkpoint folder: {missing}" in capsys.readouterr().err
    saved = tmp_path / "model"
    tiny_model().save_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(
        json.dumps({**config, "num_experts": 2, "tail_expert_ids": [1]})
    )
    assert main(["predict", str(saved), str(EXAMPLES / "NaCl_rocksalt.cif")]) == 1
    error = capsys.readouterr().err
    assert (
        "error: the weights in" in error
        and "gate.weight: checkpoint [4, 6], config [2, 6]" in error
    )
    assert "Traceback" not in error


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("preset: reference\nnum_train_epochs: [3\nlearning_rate: 1e-3\n")
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"error: {config}:3:" in error and "invalid YAML" in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("extra", "expected"),
    [([], "bf16"), (["--bf16_full_eval", "true"], "bf16"), (["--bf16", "false"], "no")],
)
def test_train_switches_on_recommended_bf16_so_that_the_trainer_uses_it(
    tmp_path, monkeypatch, capsys, extra, expected
):
    import physmoe.runtime
    import physmoe.workflow
    from physmoe.training import PhysMoETrainer
    from tiny_models import tiny_model

    seen = {}

    def fake_train_and_evaluate(model_args, data_args, run_args, training_args):
        seen["args"] = training_args
        return {"calibration_temperature": 1.0, "test_top1_accuracy": 0.5}

    monkeypatch.setattr(
        physmoe.runtime, "recommended_autocast_dtype", lambda device=None: torch.bfloat16
    )
    monkeypatch.setattr(physmoe.workflow, "train_and_evaluate", fake_train_and_evaluate)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none"})
    )
    assert main(["train", str(config), *extra]) == 0
    trainer = PhysMoETrainer(tiny_model(), seen["args"])
    assert trainer.accelerator.mixed_precision == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only case: no accelerator")
def test_train_without_use_cpu_runs_with_the_automatic_bf16_on_a_cpu(
    small_dataset, tmp_path, monkeypatch
):
    """bf16 switched on automatically must not make transformers refuse the config ("Your setup
    doesn't support bf16/gpu"): on a machine without accelerator use_cpu comes with it."""
    import physmoe.runtime
    import physmoe.workflow

    monkeypatch.setattr(physmoe.runtime, "cpu_supports_bf16", lambda: True)  # as on our CPUs
    seen = {}
    real = physmoe.workflow.train_and_evaluate

    def spy(model_args, data_args, run_args, training_args):
        seen["args"] = training_args
        return real(model_args, data_args, run_args, training_args)

    monkeypatch.setattr(physmoe.workflow, "train_and_evaluate", spy)
    out = tmp_path / "model"
    config = write_config(
        tmp_path / "run.yaml",
        small_dataset,
        out,
        use_cpu=None,
        bf16=None,
        num_train_epochs=1,
        plots=False,
        max_train_samples=16,
        max_eval_samples=8,
    )
    assert not {"use_cpu", "bf16"} & set(yaml.safe_load(config.read_text()))
    assert main(["train", str(config)]) == 0
    assert seen["args"].bf16 and seen["args"].use_cpu
    assert (out / "model.safetensors").is_file()

    # A user's explicit use_cpu: false is kept; bf16 is then not switched on (fp32 runs).
    def fake(model_args, data_args, run_args, training_args):
        seen["args"] = training_args
        return {"calibration_temperature": 1.0}

    monkeypatch.setattr(physmoe.workflow, "train_and_evaluate", fake)
    other = str(tmp_path / "b")
    assert main(["train", str(config), "--use_cpu", "false", "--output_dir", other]) == 0
    assert not seen["args"].bf16 and not seen["args"].use_cpu


def test_push_to_hub_publishes_the_final_card_with_the_test_metrics(
    small_dataset, tmp_path, hub_server
):
    from huggingface_hub import hf_hub_download

    out = tmp_path / "pushed"
    config = write_config(
        tmp_path / "push.yaml",
        small_dataset,
        out,
        num_train_epochs=1,
        plots=False,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=True,
        hub_model_id="physmoe-tiny",
    )
    assert main(["train", str(config)]) == 0
    results = json.loads((out / "all_results.json").read_text())
    card = ModelCard.load(hf_hub_download(f"{hub_server.namespace}/physmoe-tiny", "README.md"))
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["accuracy"] == pytest.approx(results["test_top1_accuracy"])
    assert "few-shot" in card.text and card.text == ModelCard.load(out / "README.md").text
    assert hub_server.unhandled == []


def test_fine_tuning_overrides_are_validated_and_label_sets_checked(tmp_path):
    from physmoe import ResNet1D_MoE
    from physmoe.workflow import ModelArguments, build_model
    from tiny_models import tiny_model

    counts = np.ones(230)
    saved = tmp_path / "base"
    tiny_model(seed=3).save_pretrained(saved)
    model = build_model(ModelArguments(model_name_or_path=str(saved)), counts)
    for name, tensor in ResNet1D_MoE.from_pretrained(saved).state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    tuned = build_model(
        ModelArguments(model_name_or_path=str(saved), model_overrides='{"tau": 1.0}'), counts
    )
    assert tuned.config.tau == 1.0 and tuned.config.class_prior == pytest.approx([1 / 230] * 230)
    with pytest.raises(ValueError, match="hierarchical_inference must be one of"):
        build_model(
            ModelArguments(
                model_name_or_path=str(saved), model_overrides='{"hierarchical_inference": "bogus"}'
            ),
            counts,
        )
    with pytest.raises(
        ValueError, match="hierarchical_inference must be one of"
    ):  # the model checks too
        ResNet1D_MoE.from_pretrained(saved, hierarchical_inference="bogus")

    subset = tmp_path / "subset"
    tiny_model(
        num_labels=10, hierarchical_inference="none", loss_preset="cross_entropy"
    ).save_pretrained(subset)
    with pytest.raises(ValueError, match="predicts 10 labels, not the 230 space groups"):
        build_model(ModelArguments(model_name_or_path=str(subset)), counts)


def test_train_on_a_stream_of_generated_crystals(tmp_path, capsys):
    """dataset: stream trains on generated crystals for max_steps, saves the stream position in
    every checkpoint and evaluates on held-out generated crystals that the stream never yields."""
    out = tmp_path / "stream"
    stream_settings = dict(
        stream_seed=1,
        stream_max_atoms=16,
        stream_validation_size=12,
        stream_test_size=12,
        patterns_per_crystal=2,
        stream_crystals_per_block=4,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        dataloader_num_workers=1,
        plots=False,
        bootstrap_samples=10,
    )
    config = write_config(tmp_path / "stream.yaml", "stream", out, **stream_settings)
    assert main(["train", str(config)]) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_num_samples"] == 12 and results["validation_num_samples"] == 12
    position = json.loads((out / "checkpoint-4" / "physmoe_stream.json").read_text())
    assert position["batches_per_rank"] == 4 and position["seed"] == 1
    assert "streamed / 12 / 12" in (out / "README.md").read_text()

    from physmoe.workflow import DataArguments, build_stream, load_data

    fields = {k: v for k, v in stream_settings.items() if hasattr(DataArguments, k)}
    data_args = DataArguments(dataset="stream", **fields)
    held_out, _ = load_data(data_args)
    assert held_out["test"][0]["structure_id"] == "test-1-0"
    stream = build_stream(data_args, held_out)
    assert len(stream.exclude_fingerprints) == 24
    rows = iter(stream.configure(batch_size=1, num_workers=0))
    streamed = {next(rows)["structure_id"] for _ in range(64)}
    held_ids = {i for split in ("validation", "test") for i in held_out[split]["structure_id"]}
    assert len(held_ids) == 24 and not streamed & held_ids

    settings = {**stream_settings, "max_steps": -1}
    no_steps = write_config(tmp_path / "bad.yaml", "stream", tmp_path / "bad", **settings)
    assert main(["train", str(no_steps)]) == 1
    assert "max_steps" in capsys.readouterr().err


def test_simulate_with_the_fast_generator(tmp_path, capsys):
    from datasets import load_from_disk

    out = tmp_path / "fast"
    args = ["simulate", str(out), "--num-structures", "40", "--generator", "fast"]
    assert main([*args, "--num-proc", "1", "--shard-size", "20", "--max-atoms", "24"]) == 0
    table = capsys.readouterr().out
    assert "split" in table and "space groups" in table
    dataset = load_from_disk(out / "dataset")
    assert sum(len(split) for split in dataset.values()) == 40
    assert set(dataset["train"]["source"]) == {"random_crystals"}


def test_evaluate_max_samples_limits_every_split(small_dataset, tmp_path):
    from physmoe import XRDFeatureExtractor
    from physmoe.workflow import DataArguments, load_data
    from tiny_models import tiny_model

    # A fresh copy: subsampling used to write cache-*.arrow files into the dataset folder.
    data = shutil.copytree(small_dataset, tmp_path / "data")
    files = sorted(path.name for path in data.rglob("*"))
    saved = tmp_path / "model"
    model = tiny_model(seed=1)
    model.save_pretrained(saved)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(saved)
    output = tmp_path / "metrics.json"
    for split in ("train", "test"):
        arguments = ["evaluate", str(saved), "--dataset", str(data), "--split", split]
        assert main([*arguments, "--max-samples", "5", "--output", str(output)]) == 0
        assert json.loads(output.read_text())[f"{split}_num_samples"] == 5, split
    limited, _ = load_data(
        DataArguments(dataset=str(data), max_train_samples=4, max_eval_samples=3)
    )
    assert len(limited["train"]) == 4 and len(limited["test"]) == 3
    assert sorted(path.name for path in data.rglob("*")) == files


@pytest.mark.parametrize(("extra", "expected"), [([], True), (["--disable_tqdm", "false"], False)])
def test_train_logs_instead_of_drawing_a_progress_bar_into_a_file(
    tmp_path, monkeypatch, extra, expected
):
    """Under pytest stderr is no terminal, as in a log file: no bar unless asked for."""
    import physmoe.workflow

    seen = {}

    class Stop(Exception):
        pass

    def capture(model_args, data_args, run_args, training_args):
        seen["disable_tqdm"] = training_args.disable_tqdm
        raise Stop

    monkeypatch.setattr(physmoe.workflow, "train_and_evaluate", capture)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "use_cpu": True}))
    with pytest.raises(Stop):
        main(["train", str(config), *extra])
    assert seen["disable_tqdm"] is expected


def test_predict_prior_weight_for_balanced_experts_models(tmp_path, capsys):
    from physmoe.data.feature_extraction import XRDFeatureExtractor
    from physmoe.inference import SpaceGroupPredictor
    from tiny_models import tiny_model

    counts = np.arange(1, 231, dtype=float) ** 2  # a strongly skewed training prior
    saved = tmp_path / "balanced"
    model = tiny_model(
        seed=2,
        loss_preset="balanced_experts",
        class_prior=counts.tolist(),
        hierarchical_inference="none",
    )
    model.save_pretrained(saved)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(saved)
    cif = str(EXAMPLES / "NaCl_rocksalt.cif")

    def probabilities(extra):
        assert main(["predict", str(saved), cif, "--json", "--top-k", "230", *extra]) == 0
        return {
            row["space_group"]: row["probability"]
            for row in json.loads(capsys.readouterr().out)[0]["candidates"]
        }

    balanced, weighted = probabilities([]), probabilities(["--prior-weight", "1"])
    # The oracle: the predictor with the config field set by hand.
    predictor = SpaceGroupPredictor.from_pretrained(saved)
    predictor.model.config.inference_prior_weight = 1.0
    expected = {
        c.space_group: c.probability for c in predictor.predict_file(cif, top_k=230).candidates
    }
    assert weighted == pytest.approx(expected, abs=1e-6)
    # The prior grows with the space-group number: it moves probability towards high numbers.
    mean_number = {
        name: sum(sg * p for sg, p in probs.items())
        for name, probs in (("w0", balanced), ("w1", weighted))
    }
    assert mean_number["w1"] > mean_number["w0"] + 1

    assert main(["predict", str(saved), cif, "--prior-weight", "1.5"]) == 1
    assert "--prior-weight must lie in [0, 1], got 1.5" in capsys.readouterr().err
    plain = tmp_path / "plain"
    tiny_model().save_pretrained(plain)
    assert main(["predict", str(plain), cif, "--prior-weight", "1"]) == 1
    assert "loss_preset='balanced_experts'" in capsys.readouterr().err


def test_errors_are_one_line_and_minus_v_shows_the_traceback(monkeypatch, capsys):
    import physmoe.cli

    def broken(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(physmoe.cli, "_predict", broken)
    assert main(["predict", "model", "scan.xy"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unsupported operand") and "physmoe -v" in err
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["-v", "predict", "model", "scan.xy"])
    assert main(["evaluate", "--batch-size", "0", "no/such/model"]) == 1
    assert "physmoe -v" not in capsys.readouterr().err  # bad input: no hint
