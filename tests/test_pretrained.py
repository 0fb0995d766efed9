"""The pretrained checkpoint shipped inside the package: `default_checkpoint()`, `physmoe predict`
without a model, and the wheel that carries it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from physmoe import ResNet1D_MoE
from physmoe.cli import _predict_model_and_files, main
from physmoe.data.feature_extraction import XRDFeatureExtractor
from physmoe.inference import SpaceGroupPredictor, default_checkpoint
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NACL = str(EXAMPLES / "NaCl_rocksalt.cif")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    model = tiny_model(seed=3, calibration_temperature=1.7)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)
    return folder


def test_a_build_without_weights_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("physmoe.inference._SHIPPED_CHECKPOINT", tmp_path)
    with pytest.raises(FileNotFoundError, match=f"no pretrained checkpoint in {tmp_path}"):
        default_checkpoint()
    (tmp_path / "config.json").write_text("{}")  # a partial folder is no checkpoint either
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        default_checkpoint()


def test_predict_without_a_model_uses_the_shipped_checkpoint(tiny_folder, monkeypatch, capsys):
    monkeypatch.setattr("physmoe.inference._SHIPPED_CHECKPOINT", tiny_folder)
    assert main(["predict", NACL, str(EXAMPLES / "TiO2_rutile.cif"), "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert (
        main(["predict", str(tiny_folder), NACL, str(EXAMPLES / "TiO2_rutile.cif"), "--json"]) == 0
    )
    named = json.loads(capsys.readouterr().out)
    assert shipped == named and [r["source"] for r in shipped] == [
        "NaCl_rocksalt.cif",
        "TiO2_rutile.cif",
    ]
    assert main(["predict", "--model", str(tiny_folder), NACL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == named[:1]


@pytest.mark.parametrize(
    ("inputs", "expected_model", "expected_files"),
    [
        (["examples/NaCl_rocksalt.cif"], "shipped", ["examples/NaCl_rocksalt.cif"]),
        (["missing.xy", "b.cif"], "shipped", ["missing.xy", "b.cif"]),  # named like a file
        (["outputs/quickstart", "a.cif"], "outputs/quickstart", ["a.cif"]),  # legacy form
        (["user/model", "a.xy", "b.xy"], "user/model", ["a.xy", "b.xy"]),  # a Hub id
    ],
)
def test_which_argument_is_the_model(
    inputs, expected_model, expected_files, tiny_folder, monkeypatch
):
    monkeypatch.setattr("physmoe.inference._SHIPPED_CHECKPOINT", tiny_folder)
    monkeypatch.chdir(ROOT)
    model, files = _predict_model_and_files(None, inputs)
    assert model == (str(tiny_folder) if expected_model == "shipped" else expected_model)
    assert files == expected_files


def test_a_lone_folder_is_not_predicted(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 1
    assert f"{tmp_path} is a folder: name the files to predict after it" in capsys.readouterr().err


# -- the shipped weights -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_checkpoint_scores_what_its_card_reports():
    """The package carries a complete, calibrated checkpoint under 10 MB whose real-structure
    numbers (clean patterns, recomputed here) are the ones its model card states."""
    from physmoe.evaluation.real import run_real_benchmark

    folder = default_checkpoint()
    assert sum(path.stat().st_size for path in folder.iterdir()) < 10_000_000
    model = ResNet1D_MoE.from_pretrained(folder)
    assert model.config.calibration_temperature not in (None, 1.0)
    recorded = json.loads((folder / "real_benchmark.json").read_text())["clean"]
    measured = run_real_benchmark(model, conditions="clean")
    assert measured["num_samples"] == recorded["num_samples"] >= 300
    for key in (
        "top1_accuracy",
        "top5_accuracy",
        "crystal_system_accuracy",
    ):  # one structure of slack
        assert measured[key] == pytest.approx(recorded[key], abs=1.01 / recorded["num_samples"]), (
            key
        )
        assert f"{recorded[key]:.3f}" in (folder / "README.md").read_text(), key
    # Far above the frequency baselines (real-structure top-1 0.038, crystal system 0.184).
    assert measured["top1_accuracy"] > 3 * measured["baseline_prior_top1_accuracy"]
    assert measured["crystal_system_accuracy"] > 2 * measured["baseline_majority_system_accuracy"]


def test_the_shipped_checkpoint_through_the_predictor():
    predictor = SpaceGroupPredictor.from_pretrained(default_checkpoint())
    assert (
        predictor.temperature
        == ResNet1D_MoE.from_pretrained(default_checkpoint()).config.calibration_temperature
    )
    (result,) = [predictor.predict_file(NACL, top_k=5)]
    probabilities = [candidate.probability for candidate in result.candidates]
    assert (
        probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    )
    assert result.candidates[0].crystal_system == "cubic"  # rock salt


# -- the wheel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_wheel_carries_the_checkpoint_and_predicts_from_any_folder(tmp_path, capsys):
    """Build the wheel, install it into a fresh environment (dependencies borrowed from this one,
    physmoe itself only from the wheel) and predict from another folder with no model named."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("physmoe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert f"physmoe/resources/pretrained/{name}" in names, name

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    # torch, transformers, ...: this environment's packages on the path, without processing its
    # .pth files (so an editable physmoe there stays invisible).
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.check_output(
        [str(python), "-c", "import physmoe.inference as i; print(i.default_checkpoint())"],
        cwd=elsewhere,
        env=environment,
        text=True,
    ).strip()
    assert where.startswith(purelib), where
    answer = subprocess.run(
        [str(env / "bin" / "physmoe"), "predict", NACL, "--json"],
        cwd=elsewhere,
        env=environment,
        text=True,
        capture_output=True,
        check=True,
    )
    assert main(["predict", NACL, "--json"]) == 0
    assert json.loads(answer.stdout) == json.loads(capsys.readouterr().out)
