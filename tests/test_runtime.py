"""physmoe.runtime: the recommended precision per device and the allocator settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from physmoe import runtime
from physmoe.runtime import recommended_autocast, recommended_autocast_dtype


def test_recommended_precision(monkeypatch):
    expected = torch.bfloat16 if runtime.cpu_supports_bf16() else None
    assert recommended_autocast_dtype() is expected
    assert recommended_autocast_dtype("cpu") is expected
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert recommended_autocast_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert recommended_autocast_dtype("cuda") is None
    with recommended_autocast("cpu", dtype=torch.bfloat16):
        assert (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
    with recommended_autocast("cpu", dtype=None):
        assert not torch.is_autocast_enabled("cpu")


MALLOC_SCRIPT = textwrap.dedent(
    """
    import json, resource, torch
    from physmoe.runtime import configure_malloc

    def faults_per_cycle(cycles=8):
        # A forward-like pattern of >= 32 MiB tensors; glibc maps and unmaps them by default.
        faults = []
        for _ in range(cycles):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            a = torch.empty(16 * 2**20).fill_(1.0)
            b = torch.empty(10 * 2**20).fill_(1.0)
            del a
            c = torch.empty(16 * 2**20).fill_(1.0)
            del b, c
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return faults

    default = faults_per_cycle()
    result = configure_malloc()
    print(json.dumps({
        "default": default, "configured": faults_per_cycle(), "method": result["method"]
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_configure_malloc_stops_page_faults_on_reallocation():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", MALLOC_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["method"] == "mallopt"
    # Default: 168 MiB mapped afresh every cycle, one fault per 4 KiB page (~43k).
    assert min(report["default"][-3:]) > 30_000
    # Configured: the heap keeps freed memory; once it has grown, cycles fault (almost) nothing.
    assert max(report["configured"][-3:]) < 1_000


def test_automatic_precision_is_always_a_valid_configuration(monkeypatch):
    import physmoe.runtime as runtime
    from physmoe.runtime import automatic_training_precision
    from physmoe.training import PhysMoETrainingArguments

    for native_bf16 in (True, False):
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda native=native_bf16: native)
        monkeypatch.setattr(runtime, "_trainer_accelerator", lambda: None)
        for use_cpu in (False, True):
            for may_set in (False, True):
                automatic = automatic_training_precision(use_cpu, may_set_use_cpu=may_set)
                settings = {"use_cpu": use_cpu, **automatic}
                PhysMoETrainingArguments(output_dir="unused", report_to=[], **settings)  # accepted
                assert settings.get("bf16", False) == (native_bf16 and (use_cpu or may_set))
    # A GPU: bf16 where it supports it, never use_cpu; other accelerators keep fp32.
    monkeypatch.setattr(runtime, "_trainer_accelerator", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert automatic_training_precision(False) == {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert automatic_training_precision(False) == {}
    monkeypatch.setattr(runtime, "_trainer_accelerator", lambda: "mps")
    assert automatic_training_precision(False) == {}
