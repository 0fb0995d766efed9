"""Hub publishing, end to end against the loopback Hub in tests/hub_server.py.

The real client code (huggingface_hub, transformers) pushes to and downloads from a server on
127.0.0.1; nothing leaves the machine. Oracles: the files and tensors written locally before the
push and git's blob id formula. The card's own content is tested in tests/test_model_card.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from transformers import (
    AutoModelForSequenceClassification,
    TrainingArguments,
)

from hub_server import (  # noqa: F401 (hub_server_fixture provides the hub_server fixture)
    DEFAULT_NAMESPACE,
    LoopbackHub,
    git_blob_sha1,
    hub_server_fixture,
)
from physmoe.data.feature_extraction import XRDFeatureExtractor
from physmoe.hub import (
    MODEL_FILE_PATTERNS,
    checkpoint_files,
    push_checkpoint,
)
from physmoe.model_card import write_model_card
from physmoe.models.resnet1d_moe import ResNet1D_MoE
from physmoe.training import PhysMoETrainer
from tiny_published_model import NUM_POINTS, tiny_model

MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_resnet1d_moe.py",
    "modeling_resnet1d_moe.py",
    "fast_path_resnet1d_moe.py",
    "loss_resnet1d_moe.py",
}
EXPECTED_PUSH = MODEL_FILES | {".gitattributes", "README.md"}


def example_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_values": torch.rand(4, NUM_POINTS, generator=generator)}


def save_checkpoint(model, folder):
    """A checkpoint folder as a Trainer leaves it: model files plus resumable training state."""
    model.save_pretrained(folder)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "trainer_state.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"args")
    return folder


def assert_same_model(loaded, original):
    loaded_state, original_state = loaded.state_dict(), original.state_dict()
    assert loaded_state.keys() == original_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(loaded_state[name], tensor), name
    assert loaded_state["hard_negative_miner.confusion_matrix"].abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(loaded(**example_inputs()).logits, original(**example_inputs()).logits)


def test_loopback_hub_speaks_the_hub_protocol(hub_server, tmp_path):
    """Repo creation, commit ids, ETags (git blob ids) and the error codes the client maps."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    repo_url = api.create_repo("protocol-check")
    assert repo_url.repo_id == f"{DEFAULT_NAMESPACE}/protocol-check"
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("protocol-check")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("protocol-check", exist_ok=True).repo_id == repo_url.repo_id

    content = b'{"answer": 42}\n'
    commit = api.create_commit(
        repo_url.repo_id,
        operations=[CommitOperationAdd("data/answer.json", content)],
        commit_message="add answer",
    )
    info = api.model_info(repo_url.repo_id)
    assert info.sha == commit.oid
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", "data/answer.json"]
    tree = {entry.path for entry in api.list_repo_tree(repo_url.repo_id, recursive=True)}
    assert tree == {".gitattributes", "data", "data/answer.json"}

    url = f"{hub_server.url}/{repo_url.repo_id}/resolve/main/data/answer.json"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as head:
        headers = head.headers
    git_id = hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()  # git hash-object
    assert git_blob_sha1(content) == git_id
    assert headers["ETag"] == f'"{git_id}"'
    assert headers["X-Repo-Commit"] == commit.oid
    assert int(headers["Content-Length"]) == len(content)
    path = hf_hub_download(repo_url.repo_id, "data/answer.json")
    assert open(path, "rb").read() == content
    assert path.startswith(hub_constants.HF_HUB_CACHE)  # the test's HF_HOME, not the user's

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_url.repo_id, "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{DEFAULT_NAMESPACE}/no-such-repo", "config.json")
    api.create_repo("secret", private=True)
    with pytest.raises(RepositoryNotFoundError):  # private repos are invisible without the token
        hf_hub_download(f"{DEFAULT_NAMESPACE}/secret", ".gitattributes", token=False)
    with pytest.raises(HfHubHTTPError) as unauthorized:
        api.create_repo("intruder", token="hf_wrong")
    assert unauthorized.value.response.status_code == 401
    assert hub_server.unhandled == []


def test_loopback_hub_binds_to_loopback_and_stops(tmp_path):
    with LoopbackHub(tmp_path / "hub") as hub:
        url = hub.url
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/api/agent-harnesses", timeout=5) as response:
            assert json.load(response) == {"standardEnvVars": [], "harnesses": {}}
        server_thread = hub._thread
    assert not server_thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/api/agent-harnesses", timeout=5)


def test_push_checkpoint_then_from_pretrained_reproduces_the_model(hub_server, tmp_path):
    model = tiny_model()
    folder = save_checkpoint(model, tmp_path / "checkpoint-2")

    commit_url = push_checkpoint(folder, "tiny-physmoe", commit_message="first version")

    repo_id = f"{DEFAULT_NAMESPACE}/tiny-physmoe"
    head = hub_server.history(repo_id)[0]
    assert commit_url == f"{hub_server.url}/{repo_id}/commit/{head.oid}"
    assert head.summary == "first version"
    pushed = hub_server.files(repo_id)
    assert set(pushed) == EXPECTED_PUSH  # no optimizer, trainer state or training args
    for name in EXPECTED_PUSH - {".gitattributes", "README.md"}:
        assert pushed[name] == (folder / name).read_bytes(), name
    assert not (folder / "README.md").exists()  # the generated card is not written locally
    card = ModelCard(pushed["README.md"].decode())
    assert card.data.library_name == "physmoe" and card.data.eval_results is None
    assert f'from_pretrained("{repo_id}")' in card.text
    assert "| Model type | resnet1d_moe |" in card.text

    assert_same_model(ResNet1D_MoE.from_pretrained(repo_id), model)
    assert_same_model(AutoModelForSequenceClassification.from_pretrained(repo_id), model)
    feature_extractor = XRDFeatureExtractor.from_pretrained(repo_id)
    assert feature_extractor.to_dict() == XRDFeatureExtractor.from_config(model.config).to_dict()
    assert hub_server.unhandled == []


def test_push_checkpoint_updates_branches_and_skips_unchanged_files(hub_server, tmp_path):
    model = tiny_model()
    folder = save_checkpoint(model, tmp_path / "checkpoint")
    write_model_card(folder, metrics={"top1_accuracy": 0.5})
    repo_id = f"{DEFAULT_NAMESPACE}/versions"
    push_checkpoint(folder, "versions")
    first = hub_server.history(repo_id)[0]

    # Unchanged files are not committed again: the Hub answers with their oid at preupload.
    assert push_checkpoint(folder, "versions").endswith(first.oid)
    assert len(hub_server.history(repo_id)) == 2  # initial commit + first push

    write_model_card(folder, metrics={"top1_accuracy": 0.75}, overwrite=True)
    push_checkpoint(folder, "versions", revision="card-update", include_training_state=True)
    assert hub_server.history(repo_id)[0].oid == first.oid  # main untouched
    branch = hub_server.files(repo_id, revision="card-update")
    assert set(branch) == EXPECTED_PUSH | {
        "optimizer.pt",
        "trainer_state.json",
        "training_args.bin",
    }
    card = ModelCard(branch["README.md"].decode())
    assert [result.metric_value for result in card.data.eval_results] == [0.75]

    loaded = ResNet1D_MoE.from_pretrained(repo_id, revision="card-update")
    assert_same_model(loaded, model)

    push_checkpoint(folder, "private-copy", private=True)
    private_id = f"{DEFAULT_NAMESPACE}/private-copy"
    assert hub_server.repos[private_id].private
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_id, "config.json", token=False)
    assert_same_model(ResNet1D_MoE.from_pretrained(private_id), model)  # HF_TOKEN is sent
    assert hub_server.unhandled == []


def test_model_push_to_hub_then_from_pretrained(hub_server):
    model = tiny_model(seed=3)
    feature_extractor = XRDFeatureExtractor.from_config(model.config)
    model.push_to_hub("lab/tiny-direct", commit_message="weights")
    feature_extractor.push_to_hub("lab/tiny-direct", commit_message="grid")
    assert [c.summary for c in hub_server.history("lab/tiny-direct")] == [
        "grid",
        "weights",
        "initial commit",
    ]
    assert set(hub_server.files("lab/tiny-direct")) == EXPECTED_PUSH
    assert_same_model(ResNet1D_MoE.from_pretrained("lab/tiny-direct"), model)
    loaded_extractor = XRDFeatureExtractor.from_pretrained("lab/tiny-direct")
    assert loaded_extractor.to_dict() == feature_extractor.to_dict()
    assert hub_server.unhandled == []


def test_trainer_push_to_hub_then_from_pretrained(hub_server, tmp_path):
    model = tiny_model(seed=4).train()
    generator = torch.Generator().manual_seed(5)
    train_set = [
        {"input_values": torch.rand(NUM_POINTS, generator=generator), "labels": 13 * i}
        for i in range(8)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        push_to_hub=True,
        hub_model_id="tiny-trainer",
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=0,
    )
    trainer = PhysMoETrainer(model=model, args=args, train_dataset=train_set)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer.train()
    trainer.push_to_hub()

    repo_id = f"{DEFAULT_NAMESPACE}/tiny-trainer"
    assert trainer.hub_model_id == repo_id
    assert hub_server.history(repo_id)[0].summary == "End of training"
    assert MODEL_FILES <= set(hub_server.files(repo_id))
    trained = trainer.model.eval()
    assert any(
        not torch.equal(initial[name], tensor) for name, tensor in trained.state_dict().items()
    )  # the pushed weights are the trained ones
    assert_same_model(ResNet1D_MoE.from_pretrained(repo_id), trained)
    # physmoe's card and the feature extractor travel with the push.
    assert ModelCard.load(hf_hub_download(repo_id, "README.md")).data.library_name == "physmoe"
    assert (
        XRDFeatureExtractor.from_pretrained(repo_id).to_dict()
        == XRDFeatureExtractor.from_config(model.config).to_dict()
    )
    assert hub_server.unhandled == []


def test_push_checkpoint_refuses_incomplete_folders_before_any_request(hub_server, tmp_path):
    model = tiny_model()
    no_weights = tmp_path / "no-weights"
    model.save_pretrained(no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors.*files present: config.json"):
        push_checkpoint(no_weights, "broken")

    pickle_only = tmp_path / "pickle-only"
    model.save_pretrained(pickle_only)
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        push_checkpoint(pickle_only, "broken")

    corrupt = tmp_path / "corrupt"
    model.save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        push_checkpoint(corrupt, "broken")

    no_config = tmp_path / "no-config"
    model.save_pretrained(no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json is missing"):
        push_checkpoint(no_config, "broken")

    with pytest.raises(FileNotFoundError):
        push_checkpoint(tmp_path / "absent", "broken")

    no_grid = tmp_path / "no-grid"
    model.save_pretrained(no_grid)
    with pytest.raises(ValueError, match="preprocessor_config.json is missing"):
        push_checkpoint(no_grid, "broken")

    good = save_checkpoint(model, tmp_path / "good")
    with pytest.raises(HFValidationError):
        push_checkpoint(good, "not/a/valid/repo")
    assert hub_server.requests == []  # every refusal came before the network

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE"):
            push_checkpoint(good, "offline")
    assert hub_server.requests == []

    with pytest.raises(HfHubHTTPError) as unauthorized:
        push_checkpoint(good, "wrong-token", token="hf_not_the_token")
    assert unauthorized.value.response.status_code == 401
    assert hub_server.repos == {}


def test_check_checkpoint_location_requires_a_json_object_config(tmp_path):
    from physmoe.hub import check_checkpoint_location

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object .*got a JSON list"):
        check_checkpoint_location(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        check_checkpoint_location(tmp_path)


def test_checkpoint_files_selects_what_users_need(tmp_path):
    folder = save_checkpoint(tiny_model(), tmp_path / "checkpoint-10")
    (folder / "rng_state.pth").write_bytes(b"rng")
    (folder / "notes.txt").write_text("private notes")
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights")
    model_files = [
        "config.json",
        "configuration_resnet1d_moe.py",
        "fast_path_resnet1d_moe.py",
        "loss_resnet1d_moe.py",
        "model.safetensors",
        "modeling_resnet1d_moe.py",
        "preprocessor_config.json",
    ]
    assert checkpoint_files(folder) == model_files
    assert checkpoint_files(folder, include_training_state=True) == sorted(
        model_files + ["optimizer.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"]
    )
    assert "README.md" in MODEL_FILE_PATTERNS


def test_sharded_checkpoint_round_trip_and_missing_shard(hub_server, tmp_path):
    model = tiny_model(seed=6)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="100KB")
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    push_checkpoint(folder, "sharded")
    repo_id = f"{DEFAULT_NAMESPACE}/sharded"
    assert set(hub_server.files(repo_id)) == (
        EXPECTED_PUSH - {"model.safetensors"} | {"model.safetensors.index.json", *shards}
    )
    assert_same_model(ResNet1D_MoE.from_pretrained(repo_id), model)

    (folder / shards[-1]).unlink()
    with pytest.raises(ValueError, match=f"missing: \\['{shards[-1]}'\\]"):
        push_checkpoint(folder, "sharded")


def test_physmoe_push_cli_publishes_a_checkpoint(hub_server, tmp_path):
    """``physmoe push CHECKPOINT REPO_ID`` in a fresh process pointed at the loopback Hub."""
    pytest.importorskip("physmoe.cli", reason="the CLI (physmoe.cli) is not written yet")
    model = tiny_model(seed=7)
    folder = save_checkpoint(model, tmp_path / "cli-checkpoint")
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_server.url,
        "HF_TOKEN": hub_server.token,
        "HF_HOME": str(tmp_path / "cli-hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("TRANSFORMERS_OFFLINE", None)
    command = [
        sys.executable,
        "-c",
        "import sys; from physmoe.cli import main; sys.argv[0] = 'physmoe'; sys.exit(main())",
        "push",
        str(folder),
        "cli-model",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    repo_id = f"{DEFAULT_NAMESPACE}/cli-model"
    assert set(hub_server.files(repo_id)) == EXPECTED_PUSH
    assert hub_server.history(repo_id)[0].oid in result.stdout  # prints the commit URL
    assert_same_model(ResNet1D_MoE.from_pretrained(repo_id), model)
    assert hub_server.unhandled == []


def test_push_checkpoint_without_a_connection_names_the_repo_and_the_cause(
    hub_server, tmp_path, monkeypatch, capsys
):
    import socket

    from physmoe.cli import main

    folder = save_checkpoint(tiny_model(), tmp_path / "checkpoint")
    with socket.socket() as probe:  # a local port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(hub_constants, "ENDPOINT", closed)
    message = rf"to tiny-physmoe: the Hugging Face Hub at {closed} could not be reached"
    with pytest.raises(ConnectionError, match=message):
        push_checkpoint(folder, "tiny-physmoe")
    assert main(["push", str(folder), "tiny-physmoe"]) == 1
    error = capsys.readouterr().err
    assert f"error: cannot push {folder} to tiny-physmoe" in error and "ConnectError" in error
