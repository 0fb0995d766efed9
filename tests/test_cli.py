"""The main job through the `physmoe` command: train -> test -> save -> reload -> predict."""

from __future__ import annotations

import json
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
from physmoe.data.dataset import default_dataset, read_structure_archive, write_structure_archive
from tiny_models import TINY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """60 embedded structures of 4 groups, built like the default dataset."""
    root = tmp_path_factory.mktemp("data")
    full = read_structure_archive()
    keep = np.concatenate([np.flatnonzero(full.space_groups == g)[:15] for g in (2, 14, 62, 225)])
    archive = write_structure_archive(
        root / "small.npz", full.structure_ids[keep].tolist(), [full.crystal(int(i)) for i in keep],
        [int(g) or None for g in full.requested_space_groups[keep]], full.space_groups[keep].tolist(),
    )
    default_dataset(cache_dir=root / "cache", archive=archive, progress=False)
    (built,) = (root / "cache").iterdir()
    return built


def write_config(path: Path, dataset: Path, output_dir: Path, **extra) -> Path:
    settings = {
        "preset": "reference", "dataset": str(dataset), "output_dir": str(output_dir), "model_overrides": TINY,
        "num_train_epochs": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "learning_rate": 3e-3, "eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
        "metric_for_best_model": "balanced_accuracy", "logging_steps": 2, "use_cpu": True, "report_to": "none",
        "bootstrap_samples": 50, "bf16": False, "disable_tqdm": True, **extra,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def test_train_evaluate_predict_end_to_end(small_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    config = write_config(tmp_path / "run.yaml", small_dataset, out, predict_files=[str(EXAMPLES / "TiO2_rutile.cif")])
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "Top-1 accuracy" in printed and "calibration temperature" in printed and "TiO2_rutile.cif" in printed

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json", "log_history.json"):
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
    confusion = load_file(out / "model.safetensors")["hard_negative_miner.confusion_matrix"].double()
    confusion.fill_diagonal_(0)
    true, predicted = divmod(int(confusion.argmax()), 230)
    assert (pairs[0]["true"], pairs[0]["predicted"]) == (ID2LABEL[true], ID2LABEL[predicted])
    assert pairs[0]["count"] == pytest.approx(float(confusion.max()), rel=1e-6)

    # Reload from disk: evaluation on the test split reproduces the training run's numbers.
    assert main(["evaluate", str(out), "--dataset", str(small_dataset), "--split", "test", "--output", str(tmp_path / "m.json")]) == 0
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["test_top1_accuracy"] == pytest.approx(results["test_top1_accuracy"])
    assert evaluated["test_balanced_accuracy"] == pytest.approx(results["test_balanced_accuracy"])

    capsys.readouterr()
    assert main(["predict", str(out), str(EXAMPLES / "NaCl_rocksalt.cif"), "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["source"] == "NaCl_rocksalt.cif" and len(answer[0]["candidates"]) == 3


def test_finished_models_are_not_overwritten_and_killed_runs_resume(small_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    config = write_config(tmp_path / "run.yaml", small_dataset, out, num_train_epochs=1, plots=False)
    assert main(["train", str(config)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", str(config)]) == 1
    assert "already holds a trained model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["train", str(config), "--overwrite_output", "true", "--seed", "1"]) == 0
    assert (out / "model.safetensors").read_bytes() != before

    # A run killed after its first epoch's checkpoint continues from it.
    killed = tmp_path / "killed"
    assert main(["train", str(write_config(tmp_path / "k.yaml", small_dataset, killed, num_train_epochs=1, plots=False))]) == 0
    (killed / "model.safetensors").unlink()  # as if it had died before saving the final model
    (first_checkpoint,) = killed.glob("checkpoint-*")
    state = (first_checkpoint / "trainer_state.json").read_bytes()
    assert main(["train", str(write_config(tmp_path / "k2.yaml", small_dataset, killed, num_train_epochs=2, plots=False))]) == 0
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


@pytest.mark.parametrize(("extra", "expected"), [([], "bf16"), (["--bf16_full_eval", "true"], "bf16"), (["--bf16", "false"], "no")])
def test_train_switches_on_recommended_bf16_so_that_the_trainer_uses_it(tmp_path, monkeypatch, capsys, extra, expected):
    import physmoe.runtime
    import physmoe.workflow
    from physmoe.training import PhysMoETrainer
    from tiny_models import tiny_model

    seen = {}

    def fake_train_and_evaluate(model_args, data_args, run_args, training_args):
        seen["args"] = training_args
        return {"calibration_temperature": 1.0, "test_top1_accuracy": 0.5}

    monkeypatch.setattr(physmoe.runtime, "recommended_autocast_dtype", lambda device=None: torch.bfloat16)
    monkeypatch.setattr(physmoe.workflow, "train_and_evaluate", fake_train_and_evaluate)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none"}))
    assert main(["train", str(config), *extra]) == 0
    trainer = PhysMoETrainer(tiny_model(), seen["args"])
    assert trainer.accelerator.mixed_precision == expected


def test_overwriting_a_finished_model_removes_it_first_so_a_killed_rerun_resumes(tmp_path):
    from physmoe.workflow import _check_output_dir

    out = tmp_path / "model"
    (out / "checkpoint-10").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "README.md", "all_results.json", "example_top5.png", "notes.txt"):
        (out / name).write_text("x")
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        _check_output_dir(out, overwrite=False)
    assert _check_output_dir(out, overwrite=True) is None
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]  # not ours: kept
    # The new run is killed after its first checkpoint: started again, it resumes from it.
    (out / "checkpoint-5").mkdir()
    assert _check_output_dir(out, overwrite=False) == str(out / "checkpoint-5")


def test_push_to_hub_publishes_the_final_card_with_the_test_metrics(small_dataset, tmp_path, hub_server):
    from huggingface_hub import hf_hub_download

    out = tmp_path / "pushed"
    config = write_config(
        tmp_path / "push.yaml", small_dataset, out, num_train_epochs=1, plots=False, save_strategy="no",
        eval_strategy="no", load_best_model_at_end=False, push_to_hub=True, hub_model_id="physmoe-tiny",
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
    tuned = build_model(ModelArguments(model_name_or_path=str(saved), model_overrides='{"tau": 1.0}'), counts)
    assert tuned.config.tau == 1.0 and tuned.config.class_prior == pytest.approx([1 / 230] * 230)
    with pytest.raises(ValueError, match="hierarchical_inference must be one of"):
        build_model(ModelArguments(model_name_or_path=str(saved), model_overrides='{"hierarchical_inference": "bogus"}'), counts)
    with pytest.raises(ValueError, match="hierarchical_inference must be one of"):  # the model checks too
        ResNet1D_MoE.from_pretrained(saved, hierarchical_inference="bogus")

    subset = tmp_path / "subset"
    tiny_model(num_labels=10, hierarchical_inference="none", loss_preset="cross_entropy").save_pretrained(subset)
    with pytest.raises(ValueError, match="predicts 10 labels, not the 230 space groups"):
        build_model(ModelArguments(model_name_or_path=str(subset)), counts)


def test_train_on_a_stream_of_generated_crystals(tmp_path, capsys):
    """dataset: stream trains on generated crystals for max_steps, saves the stream position in
    every checkpoint and evaluates on held-out generated crystals that the stream never yields."""
    out = tmp_path / "stream"
    stream_settings = dict(
        stream_seed=1, stream_max_atoms=16, stream_validation_size=12, stream_test_size=12,
        patterns_per_crystal=2, stream_crystals_per_block=4, max_steps=4, eval_strategy="steps",
        eval_steps=2, save_strategy="steps", save_steps=2, dataloader_num_workers=1, plots=False,
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
