"""SpaceGroupPredictor: calibrated top-k answers for patterns and CIF files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from physmoe import ResNet1D_MoE, XRDFeatureExtractor
from physmoe.crystallography import CRYSTAL_SYSTEMS, indistinguishable_groups, space_group_symbol
from physmoe.data import MeasurementConditions, TwoThetaGrid, render_patterns, simulate_peaks
from physmoe.inference import SpaceGroupPredictor, format_predictions
from tiny_models import save_tiny_model, tiny_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def reference_probabilities(folder, input_values: torch.Tensor, temperature: float) -> torch.Tensor:
    model = ResNet1D_MoE.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.softmax(model(input_values).logits / temperature, dim=-1)


def test_predictions_are_the_calibrated_top_k_of_the_model(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    assert predictor.temperature == 2.5
    rng = np.random.default_rng(0)
    two_theta = np.linspace(5, 90, 500)
    intensity = rng.random(500)
    result = predictor.predict(two_theta, intensity, top_k=7)[0]
    inputs = XRDFeatureExtractor.from_pretrained(saved_model)(
        two_theta, intensity, return_tensors="pt"
    )["input_values"]
    expected = reference_probabilities(saved_model, inputs, 2.5)[0]
    top = expected.topk(7)
    assert [c.space_group for c in result.candidates] == (top.indices + 1).tolist()
    np.testing.assert_allclose(
        [c.probability for c in result.candidates], top.values.numpy(), rtol=1e-5
    )
    assert [c.rank for c in result.candidates] == list(range(1, 8))
    first = result.best
    assert first.symbol == space_group_symbol(first.space_group)
    assert first.crystal_system in CRYSTAL_SYSTEMS
    assert sum(result.crystal_system_probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_cif_prediction_uses_the_clean_simulated_pattern(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    cif = EXAMPLES / "NaCl_rocksalt.cif"
    result = predictor.predict_file(cif, top_k=3)
    grid = TwoThetaGrid.from_config(predictor.model.config)
    peaks = simulate_peaks(cif, two_theta_range=(grid.two_theta_min, grid.two_theta_max))
    pattern = render_patterns([peaks], grid, MeasurementConditions.clean())
    expected = reference_probabilities(saved_model, pattern, 2.5)[0].topk(3)
    assert result.source == "NaCl_rocksalt.cif"
    assert [c.space_group for c in result.candidates] == (expected.indices + 1).tolist()


def test_pattern_files_at_another_wavelength(saved_model, tmp_path):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    # Silicon lines measured with Co K-alpha: the file states no wavelength, the caller does.
    cobalt = 1.78897
    peaks = simulate_peaks(
        EXAMPLES / "NaCl_rocksalt.cif", wavelength=cobalt, two_theta_range=(5, 120)
    )
    two_theta = np.linspace(5, 120, 2000)
    intensity = sum(
        h * np.exp(-0.5 * ((two_theta - p) / 0.2) ** 2)
        for p, h in zip(peaks.two_theta, peaks.intensity, strict=True)
    )
    path = tmp_path / "scan.xy"
    np.savetxt(path, np.column_stack([two_theta, intensity]))
    from_file = predictor.predict_file(path, wavelength=cobalt, top_k=4)
    direct = predictor.predict(two_theta, intensity, wavelength=cobalt, top_k=4)[0]
    assert [c.space_group for c in from_file.candidates] == [
        c.space_group for c in direct.candidates
    ]
    assert from_file.source == "scan.xy"
    table = format_predictions([from_file])
    assert "scan.xy" in table and from_file.best.symbol in table and "probability" in table


def test_bad_inputs_are_refused(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model)
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict_input_values(torch.rand(1, 64), top_k=0)
    with pytest.raises(ValueError, match="covers"):
        predictor.predict(np.linspace(40, 45, 50), np.ones(50))
    with pytest.raises(ValueError, match="temperature"):
        SpaceGroupPredictor(predictor.model, temperature=0.0)
    with pytest.raises(ValueError, match="1 sources for 3 patterns"):
        predictor.predict_input_values(torch.rand(3, 64), sources=["a.xy"])
    assert [
        p.source for p in predictor.predict_input_values(torch.rand(2, 64), sources=["a", "b"])
    ] == ["a", "b"]
    anonymous = ResNet1D_MoE(
        tiny_config(num_labels=10, hierarchical_inference="none", loss_preset="cross_entropy")
    )
    with pytest.raises(ValueError, match="10 labels are not known space groups"):
        SpaceGroupPredictor(anonymous)


def nacl_pattern(predictor) -> torch.Tensor:
    return predictor.pattern_from_cif(EXAMPLES / "NaCl_rocksalt.cif")  # Fm-3m, max 1


def probabilities_of(predictions) -> np.ndarray:
    return np.array([[c.probability for c in p.candidates] for p in predictions])


def test_patterns_on_any_scale_and_dtype_predict_as_scaled_to_max_1(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    pattern = nacl_pattern(predictor)
    assert float(pattern.max()) == 1.0
    expected = predictor.predict_input_values(pattern, top_k=230)
    reference = reference_probabilities(saved_model, pattern[None], 2.5)[0]
    ranked = reference.sort(descending=True).values
    np.testing.assert_allclose(probabilities_of(expected)[0], ranked, rtol=1e-5)
    scaled = [
        pattern * 100,  # a 0-100 pattern, as read_reference_npy returns them
        pattern * 0.01,
        (pattern * 1000).double(),
        (pattern * 1000).round().to(torch.int32),  # integer counts
        (pattern * 255).round().to(torch.uint8),
        (pattern * 100).numpy(),
    ]
    for values in scaled:
        predictions = predictor.predict_input_values(values, top_k=230)
        as_float = torch.as_tensor(values).double()
        assert predictions[0].best.space_group == expected[0].best.space_group
        exact = predictor.predict_input_values((as_float / as_float.max()).float(), top_k=230)
        np.testing.assert_allclose(
            probabilities_of(predictions), probabilities_of(exact), rtol=1e-5
        )
    times_100 = predictor.predict_input_values(pattern * 100, top_k=230)
    np.testing.assert_allclose(probabilities_of(times_100), probabilities_of(expected), rtol=1e-5)
    # Small negative values (noise after background subtraction) are clipped, as the feature
    # extractor and the training renderer do.
    noisy = pattern.clone()
    noisy[pattern == 0] = -0.01
    clipped = predictor.predict_input_values(noisy, top_k=230)
    np.testing.assert_allclose(probabilities_of(clipped), probabilities_of(expected), rtol=1e-5)


def test_what_cannot_be_a_pattern_is_refused_with_the_reason(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    good = nacl_pattern(predictor)
    index = torch.arange(64)
    cases = [
        (torch.zeros(64), "all zero"),
        (-good, "no positive intensity"),
        (torch.where(index == 5, 1.0, -2.0), r"most negative value -2 outweighs its maximum 1 "),
        (torch.where(index == 3, float("nan"), good), r"non-finite values \(NaN or inf\)"),
        (torch.where(index == 3, float("inf"), good), r"non-finite values"),
    ]
    for bad, reason in cases:
        batch = torch.stack([good, bad])
        expected = rf"^pattern 1 \(b.xy\) cannot be a diffraction pattern: .*{reason}"
        with pytest.raises(ValueError, match=expected):
            predictor.predict_input_values(batch, sources=["a.xy", "b.xy"])
    expected = r"\[batch, num_points\] on the model grid \(64 points\), got shape \(2, 65\)"
    with pytest.raises(ValueError, match=expected):
        predictor.predict_input_values(torch.rand(2, 65))


def test_predictions_of_a_model_over_a_subset_of_groups_name_those_groups():
    torch.manual_seed(1)
    numbers = [14, 62, 225]  # labels 0, 1, 2
    model = ResNet1D_MoE(
        tiny_config(num_labels=3, label_space_groups=numbers, loss_preset="cross_entropy")
    )
    result = SpaceGroupPredictor(model, autocast_dtype=torch.float32).predict_input_values(
        torch.rand(1, 64), top_k=3
    )[0]
    assert sorted(c.space_group for c in result.candidates) == numbers
    assert {c.symbol for c in result.candidates} == {"P2_1/c", "Pnma", "Fm-3m"}


def test_abstention_threshold(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    patterns = torch.rand(3, 64, generator=torch.Generator().manual_seed(3))
    plain = predictor.predict_input_values(patterns)
    best = np.array([p.best.probability for p in plain])
    assert not any(p.uncertain for p in plain) and all(p.min_confidence is None for p in plain)
    threshold = float(np.median(best))
    flagged = predictor.predict_input_values(patterns, min_confidence=threshold)
    # Strictly below the threshold is uncertain; the candidates are listed all the same.
    assert [p.uncertain for p in flagged] == (best < threshold).tolist()
    assert sum(p.uncertain for p in flagged) == 1
    assert [[c.space_group for c in p.candidates] for p in flagged] == [
        [c.space_group for c in p.candidates] for p in plain
    ]
    assert all(p.uncertain for p in predictor.predict_input_values(patterns, min_confidence=1.0))
    assert not any(p.uncertain for p in predictor.predict_input_values(patterns, min_confidence=0))
    table = format_predictions(flagged)
    assert table.count("uncertain") == 1 and f"min-confidence {threshold:g}" in table
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="min_confidence"):
            predictor.predict_input_values(patterns, min_confidence=bad)
    with pytest.raises(ValueError, match="min_confidence"):
        predictor.predict(np.linspace(5, 90, 100), np.ones(100), min_confidence=2)


def test_predictions_carry_the_powder_indistinguishable_set(saved_model):
    model = ResNet1D_MoE.from_pretrained(saved_model).eval()
    forward = model.forward

    def favour_p2(input_values, **kwargs):  # P2 (label 2) first, its set mates Pm and P2/m next
        output = forward(input_values, **kwargs)
        logits = torch.full_like(output.logits, -30.0)
        logits[:, [2, 5, 9]] = torch.tensor([0.0, -1.0, -2.0])
        output.logits = logits
        return output

    model.forward = favour_p2
    predictor = SpaceGroupPredictor(model, autocast_dtype=torch.float32)
    result = predictor.predict_input_values(torch.rand(1, 64), top_k=4)[0]
    assert result.best.symbol == "P2"
    assert result.indistinguishable_space_groups == (3, 6, 10)
    assert result.indistinguishable == ("P2", "Pm", "P2/m")
    # By hand at the checkpoint's temperature 2.5: three groups at 0, -1, -2 and 227 at -30.
    inside = 1 + np.exp(-1 / 2.5) + np.exp(-2 / 2.5)
    expected = inside / (inside + 227 * np.exp(-30 / 2.5))
    assert result.indistinguishable_probability == pytest.approx(expected, rel=1e-5)
    assert result.best.probability == pytest.approx(1 / (inside + 227 * np.exp(-12)), rel=1e-5)
    assert result.best.probability < result.indistinguishable_probability <= 1.0
    table = format_predictions([result])
    assert "indistinguishable by powder: P2, Pm, P2/m" in table
    assert f"summed probability {result.indistinguishable_probability:.3f}" in table
    record = result.to_dict()
    assert record["indistinguishable"] == ["P2", "Pm", "P2/m"] and record["uncertain"] is False
    assert record["candidates"][0]["symbol"] == "P2"


def test_summed_probability_of_a_random_prediction(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    patterns = torch.rand(4, 64, generator=torch.Generator().manual_seed(5))
    patterns /= patterns.amax(dim=1, keepdim=True)  # as the predictor scales them
    probabilities = reference_probabilities(saved_model, patterns, 2.5)
    for row, result in enumerate(predictor.predict_input_values(patterns)):
        members = indistinguishable_groups(result.best.space_group)
        assert result.indistinguishable_space_groups == members
        expected = float(probabilities[row, [n - 1 for n in members]].sum())
        assert result.indistinguishable_probability == pytest.approx(expected, rel=1e-5)


def test_cli_predict_min_confidence_and_json(saved_model, capsys):
    from physmoe.cli import main

    cif = str(EXAMPLES / "NaCl_rocksalt.cif")
    assert main(["predict", str(saved_model), cif, "--min-confidence", "1", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["uncertain"] is True and record["min_confidence"] == 1.0
    best = record["candidates"][0]["space_group"]
    assert record["indistinguishable_space_groups"] == list(indistinguishable_groups(best))
    assert record["indistinguishable"] == [
        space_group_symbol(n) for n in indistinguishable_groups(best)
    ]
    assert record["indistinguishable_probability"] >= record["candidates"][0]["probability"]
    assert main(["predict", str(saved_model), cif, "--min-confidence", "0.0"]) == 0
    printed = capsys.readouterr().out
    assert "uncertain" not in printed and "indistinguishable by powder" in printed
    assert main(["predict", str(saved_model), cif, "--min-confidence", "1.5"]) == 1
    assert "min_confidence must lie in [0, 1], got 1.5" in capsys.readouterr().err


# -- checkpoints that cannot be loaded: messages that say why ------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("./outputs/no-such-model", "outputs/no-such-model"),
        ("~/no-such-model", "home/no-such-model"),  # ~ expanded
        ("a/b/c", "a/b/c"),
        ("bad name", "bad name"),
    ],
)
def test_a_mistyped_local_checkpoint_path_is_named(tmp_path, monkeypatch, capsys, name, shown):
    from physmoe.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["predict", name, str(EXAMPLES / "NaCl_rocksalt.cif")]) == 1
    error = capsys.readouterr().err
    assert f"error: no such checkpoint folder: {tmp_path}/{shown}" in error or (
        f"error: no such checkpoint folder: {shown}" in error
    ), error


def test_a_mistyped_folder_under_an_existing_one_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from physmoe.hub import check_checkpoint_location

    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder: outputs/quikstart"):
        check_checkpoint_location("outputs/quikstart")
    # A Hub id when online (scripts/test.sh sets HF_HUB_OFFLINE=1: switch it off here).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert check_checkpoint_location("namespace/model") == "namespace/model"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = "no such checkpoint folder: quikstart .*HF_HUB_OFFLINE"
    with pytest.raises(FileNotFoundError, match=message):
        check_checkpoint_location("quikstart")


def test_broken_checkpoint_folders_name_the_problem(saved_model, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(saved_model, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = r"truncated/model\.safetensors is not a readable safetensors"
    with pytest.raises(ValueError, match=message):
        SpaceGroupPredictor.from_pretrained(truncated)
    no_config = tmp_path / "no_config"
    shutil.copytree(saved_model, no_config)
    (no_config / "config.json").unlink()
    message = r"no_config is not a checkpoint folder: it has no config\.json"
    with pytest.raises(ValueError, match=message):
        SpaceGroupPredictor.from_pretrained(no_config)
    with pytest.raises(ValueError, match="is a file"):
        SpaceGroupPredictor.from_pretrained(saved_model / "config.json")


def test_a_corrupt_or_mismatched_preprocessor_config_is_refused(saved_model, tmp_path, caplog):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved_model, corrupt)
    (corrupt / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt/preprocessor_config\.json is not a valid"):
        SpaceGroupPredictor.from_pretrained(corrupt)  # used to be logged as a missing file
    other_grid = tmp_path / "other_grid"
    shutil.copytree(saved_model, other_grid)
    XRDFeatureExtractor(num_points=128).save_pretrained(other_grid)
    with pytest.raises(
        ValueError,
        match=r"grid \(preprocessor_config\.json\) .*num_points=128.* differs .*num_points=64",
    ):
        SpaceGroupPredictor.from_pretrained(other_grid)
    missing = tmp_path / "missing"
    shutil.copytree(saved_model, missing)
    (missing / "preprocessor_config.json").unlink()
    with caplog.at_level("WARNING"):
        assert SpaceGroupPredictor.from_pretrained(missing).grid.num_points == 64
    assert "no preprocessor_config.json" in caplog.text


def test_input_values_and_top_k_of_the_wrong_type_are_named(saved_model):
    predictor = SpaceGroupPredictor.from_pretrained(saved_model)
    for bad in ("0.1 0.2", None, ["a", "b"]):
        with pytest.raises(TypeError, match="input_values must be a tensor or array"):
            predictor.predict_input_values(bad)
    with pytest.raises(TypeError, match="top_k must be an integer >= 1, got None"):
        predictor.predict_input_values(torch.rand(1, 64), top_k=None)
    assert len(predictor.predict_input_values(torch.rand(1, 64), top_k=3.0)[0].candidates) == 3


def test_an_unavailable_device_is_named(saved_model, monkeypatch, capsys):
    from physmoe.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cif = str(EXAMPLES / "NaCl_rocksalt.cif")
    assert main(["predict", str(saved_model), cif, "--device", "cuda"]) == 1
    assert "device 'cuda': CUDA is not available here" in capsys.readouterr().err
    assert main(["predict", str(saved_model), cif, "--device", "gpu0"]) == 1
    assert "device 'gpu0' is not a torch device name" in capsys.readouterr().err


def test_the_wavelength_a_file_states_or_lacks_is_shown_and_in_json(saved_model, tmp_path, capsys):
    from physmoe.cli import main

    two_theta = np.linspace(10, 80, 500)
    intensity = 1 + np.exp(-0.5 * ((two_theta - 40) / 0.3) ** 2)
    cobalt = tmp_path / "cobalt.xy"
    lines = "".join(f"{t} {i}\n" for t, i in zip(two_theta, intensity, strict=True))
    cobalt.write_text("# Anode: Co\n" + lines)
    plain = tmp_path / "plain.xy"
    plain.write_text(lines)
    assert main(["predict", str(saved_model), str(cobalt), str(plain)]) == 0
    printed = capsys.readouterr().out
    assert "wavelength: 1.78897 A stated in the file" in printed
    assert "wavelength: not stated: assumed the model's 1.54056 A" in printed
    assert main(["predict", str(saved_model), str(cobalt), str(plain), "--json"]) == 0
    stated, assumed = json.loads(capsys.readouterr().out)
    assert stated["wavelength"] == 1.78897 and "stated in the file" in stated["wavelength_note"]
    assert assumed["wavelength"] == 1.54056 and "assumed" in assumed["wavelength_note"]
    assert main(["predict", str(saved_model), str(cobalt), "--wavelength", "1.6", "--json"]) == 0
    (given,) = json.loads(capsys.readouterr().out)
    assert given["wavelength"] == 1.6 and given["wavelength_note"] is None
