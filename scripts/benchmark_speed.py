"""Speed of ResNet1D_MoE against a straightforward model of the published architecture.

    python scripts/benchmark_speed.py [--presets small,base,reference] [--batch-size 32]
        [--repeats 5] [--precisions fp32,bf16] [--devices cpu,cuda] [--quick] [--json out.json]

For every device (CPU, and CUDA when present), preset and precision it measures the training
step (forward with labels + PhysMoE loss + backward + AdamW), inference throughput (patterns/s,
batch ``--batch-size``), batch-1 latency and peak memory. In the same process and alternating
with ours, it times a straightforward fp32 model of the published architecture (written below:
experts in a Python loop, per-expert 3-tap convolutions on the length-1 sequence, per-expert
1024->32 projections and cosine classifiers, the same loss and optimiser) and prints our speed-up
over it. ``--quick`` is a tiny run for CI smoke tests.

The process re-executes itself once with glibc's ``MALLOC_MMAP_MAX_=0`` and a large
``MALLOC_TRIM_THRESHOLD_`` (see ``physmoe.runtime.configure_malloc``) unless ``--no-malloc-env``;
the table header records the allocator settings in effect. Peak CPU memory is the peak RSS growth
of a separate process that runs two steps of one model (``VmHWM`` minus the RSS before the steps:
activations, gradients, optimiser state or cached inference weights, not the parameters); CUDA
memory is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map
from physmoe.loss import build_loss
from physmoe.models.resnet1d_moe import ResNet1DMoEConfig, ResNet1DMoEForSpaceGroupClassification
from physmoe.runtime import (
    MALLOC_ENV,
    configure_malloc,
    malloc_configured,
    recommended_autocast_dtype,
)

NUM_CLASSES = 230
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------
# The straightforward model of the published architecture (fp32, experts in a Python loop)
# ------------------------------------------------------------------------------------------------


class PlainResBlock(nn.Module):
    """``1x1 conv (if widths differ) -> conv3-BN-LeakyReLU-conv3-BN -> + x -> LeakyReLU``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pre = (
            nn.Conv1d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.conv1 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        out = F.leaky_relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.leaky_relu(x + out)


class PlainCosine(nn.Module):
    """``cos(x, w_c)`` with weight ``[in, out]``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class StraightforwardResNet1DMoE(nn.Module):
    """The published ResNet1D_MoE ("independent" experts), written the obvious way.

    Trunk: BatchNorm on the intensities, 13 residual blocks with max then average pooling
    (8500 points -> 1), dropout after blocks 10-12. Heads: Linear(1024, 32) + cosine classifier
    to 7 crystal systems (x30); gate Linear(32, 8) plus softmax(system) @ rule_bias (a zero
    buffer); per expert a residual block of 3-tap convolutions on the length-1 trunk output,
    Linear(1024, 32) and a cosine classifier to 230 (x30); unused cRT classifiers as published.
    """

    def __init__(
        self, config: ResNet1DMoEConfig, num_experts: int = 8, scale: float = 30.0
    ) -> None:
        super().__init__()
        self.config, self.scale = config, scale
        self.intensity_norm = nn.BatchNorm1d(1)
        layers: list[nn.Module] = []
        widths = [1, *config.hidden_sizes]
        for i, (kind, padding) in enumerate(
            zip(config.pool_types, config.pool_paddings, strict=True)
        ):
            layers.append(PlainResBlock(widths[i], widths[i + 1]))
            layers.append(
                nn.MaxPool1d(2, 2, padding) if kind == "max" else nn.AvgPool1d(2, 2, padding)
            )
            if i in config.dropout_blocks:
                layers.append(nn.Dropout(config.hidden_dropout_prob))
        self.trunk = nn.Sequential(*layers)
        dim, proj = widths[-1], 32
        self.sys_proj = nn.Linear(dim, proj)
        self.sys_classifier = PlainCosine(proj, 7)
        self.gating_net = nn.Linear(proj, num_experts)
        self.register_buffer("rule_bias", torch.zeros(7, num_experts))
        self.layer3s = nn.ModuleList(PlainResBlock(dim, dim) for _ in range(num_experts))
        self.expert_proj = nn.ModuleList(nn.Linear(dim, proj) for _ in range(num_experts))
        self.classifiers = nn.ModuleList(PlainCosine(proj, NUM_CLASSES) for _ in range(num_experts))
        self.rt_classifiers = nn.ModuleList(
            PlainCosine(proj, NUM_CLASSES) for _ in range(num_experts)
        )
        self.register_buffer("sg_to_sys", sg_to_sys_map())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        front = self.trunk(self.intensity_norm(x.unsqueeze(1)))  # [B, 1024, 1]
        features = front.mean(dim=2)
        sys_embedding = self.sys_proj(features)
        sys_logits = self.scale * self.sys_classifier(sys_embedding)
        expert_logits = []
        for layer3, proj, classifier in zip(
            self.layer3s, self.expert_proj, self.classifiers, strict=True
        ):
            expert_features = layer3(front).mean(dim=2)
            expert_logits.append(self.scale * classifier(proj(expert_features)))
        gating = (
            self.gating_net(sys_embedding) + sys_logits.softmax(dim=1) @ self.rule_bias
        ).softmax(dim=1)
        ensemble = torch.einsum("bk,bkc->bc", gating, torch.stack(expert_logits, dim=1))
        allowed = self.sg_to_sys[None, :] == sys_logits.argmax(dim=1)[:, None]
        logits = ensemble.masked_fill(~allowed, torch.finfo(ensemble.dtype).min)
        return {
            "features": features,
            "sys_logits": sys_logits,
            "expert_logits": expert_logits,
            "gating_weights": gating,
            "ensemble_logits": ensemble,
            "logits": logits,
        }

    @torch.no_grad()
    def load_from(self, model: ResNet1DMoEForSpaceGroupClassification) -> None:
        """Copy the weights of an ``independent``-mode ResNet1D_MoE (no stem) into this model
        (expert 3-tap convolutions get our matrices as centre taps; side taps are untouched)."""
        trunk = model.resnet1d_moe
        self.intensity_norm.load_state_dict(trunk.input_norm.state_dict())
        blocks = [m for m in self.trunk if isinstance(m, PlainResBlock)]
        for plain, ours in zip(blocks, trunk.blocks, strict=True):
            if ours.shortcut is not None:
                plain.pre.weight.copy_(ours.shortcut.weight)
            for name in ("conv1", "conv2"):
                getattr(plain, name).weight.copy_(getattr(ours, name).weight)
            plain.bn1.load_state_dict(ours.norm1.state_dict())
            plain.bn2.load_state_dict(ours.norm2.state_dict())
        self.sys_proj.load_state_dict(model.crystal_system_projection.state_dict())
        self.sys_classifier.weight.copy_(model.crystal_system_classifier.weight[0].T)
        self.gating_net.load_state_dict(model.gate.state_dict())
        self.rule_bias.copy_(model.rule_bias)
        stages, dim = model.expert_stages, model.config.feature_dim
        for k, layer3 in enumerate(self.layer3s):
            layer3.conv1.weight[:, :, 1] = stages.weight1[k]
            layer3.conv2.weight[:, :, 1] = stages.weight2[k]
            for plain_bn, ours_bn in ((layer3.bn1, stages.norm1), (layer3.bn2, stages.norm2)):
                part = slice(k * dim, (k + 1) * dim)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(plain_bn, name).copy_(getattr(ours_bn, name)[part])
                plain_bn.num_batches_tracked.copy_(ours_bn.num_batches_tracked)
            self.expert_proj[k].weight.copy_(model.expert_projection.weight[k])
            self.expert_proj[k].bias.copy_(model.expert_projection.bias[k])
            self.classifiers[k].weight.copy_(model.expert_classifier.weight[k].T)


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it (the same for both models)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4)


class Runner:
    """Train / inference / latency closures for one model at one precision."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        loss: nn.Module | None,
        dtype: torch.dtype | None,
        device: torch.device,
        batch: int,
        num_points: int,
    ) -> None:
        self.name, self.model, self.loss, self.dtype, self.device = name, model, loss, dtype, device
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.rand(batch, num_points, generator=generator).to(device)
        self.labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
        self.single = self.inputs[:1].clone()
        self.optimizer = make_optimizer(model, device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            if self.loss is None:  # ours: loss inside the model
                loss = self.model(self.inputs, labels=self.labels).loss
            else:
                loss = self.loss(self.model(self.inputs), {"labels": self.labels})[0]
        loss.backward()
        self.optimizer.step()

    def infer(self, inputs: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            self.model(inputs)

    def infer_batch(self) -> None:
        self.infer(self.inputs)

    def infer_single(self) -> None:
        self.infer(self.single)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(runners: list[Runner], mode: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of ``mode`` per runner, the runners interleaved step by step."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for runner in runners:
        for _ in range(warmup):
            getattr(runner, mode)()
    for _ in range(repeats):
        for runner in runners:
            times[runner.name].append(timed(getattr(runner, mode), runner.device))
    return {name: statistics.median(values) for name, values in times.items()}


def build_ours(
    preset: str, device: torch.device, overrides: dict
) -> ResNet1DMoEForSpaceGroupClassification:
    torch.manual_seed(0)
    config = ResNet1DMoEConfig.from_preset(preset, **overrides)
    return ResNet1DMoEForSpaceGroupClassification(config).to(device)


def build_straightforward(device: torch.device, overrides: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    config = ResNet1DMoEConfig.from_preset("reference", **overrides)
    model = StraightforwardResNet1DMoE(config).to(device)
    loss = build_loss(
        "physmoe", config, rule_similarity_matrix(), sg_to_sys_map(), validate=False
    ).to(device)
    return model, loss


def runner_for(spec: dict, device: torch.device) -> Runner:
    """The model a memory probe ``spec`` names, wrapped in a Runner."""
    overrides = spec["overrides"]
    if spec["model"] == "straightforward":
        model, loss = build_straightforward(device, overrides)
    else:
        model, loss = build_ours(spec["preset"], device, overrides), None
    return Runner(
        spec["model"],
        model,
        loss,
        PRECISIONS[spec["precision"]],
        device,
        spec["batch"],
        model.config.num_points,
    )


def count_parameters(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def memory_probe(spec: dict) -> dict:
    """Child process: two steps of one model; peak RSS growth (MB) over the RSS before them
    (activations, gradients, optimiser state or cached inference weights; not the parameters)."""
    device = torch.device("cpu")
    torch.set_num_threads(spec["threads"])
    runner = runner_for(spec, device)
    fn = runner.train_step if spec["mode"] == "train" else runner.infer_batch
    rss_before = _status_kib("VmRSS")  # model, inputs; optimiser state and caches come next
    fn()
    fn()
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's over fork + exec).
    peak = _status_kib("VmHWM")
    return {"peak_mb": max(peak - rss_before, 0) / 1024, "peak_rss_mb": peak / 1024}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_memory(spec: dict) -> float | None:
    """Run :func:`memory_probe` in a fresh process; ``None`` if it failed."""
    command = [sys.executable, __file__, "--memory-probe", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        print(f"memory probe failed for {spec}: {result.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def measure_device(device: torch.device, args: argparse.Namespace) -> list[dict]:
    overrides = {"num_points": args.num_points} if args.num_points else {}
    num_points = args.num_points or 8500
    plain_model, plain_loss = build_straightforward(device, overrides)
    straightforward = Runner(
        "straightforward", plain_model, plain_loss, None, device, args.batch_size, num_points
    )
    rows = []
    for preset in args.presets:
        # One model per precision: the inference weight cache holds one dtype at a time.
        models = {precision: build_ours(preset, device, overrides) for precision in args.precisions}
        ours = models[args.precisions[0]]
        length = ours.config.num_points
        runners = [
            Runner(f"{preset}/{p}", models[p], None, PRECISIONS[p], device, args.batch_size, length)
            for p in args.precisions
        ]
        timings = {
            mode: alternate([*runners, straightforward], mode, args.repeats, args.warmup)
            for mode in ("train_step", "infer_batch", "infer_single")
        }
        for runner, precision in zip(runners, args.precisions, strict=True):
            row = {
                "device": device.type,
                "model": "ResNet1D_MoE",
                "preset": preset,
                "precision": precision,
                "num_points": length,
                "params_m": count_parameters(ours),
                "train_step_s": timings["train_step"][runner.name],
                "infer_batch_s": timings["infer_batch"][runner.name],
                "latency_ms": 1e3 * timings["infer_single"][runner.name],
                "speedup_train": timings["train_step"]["straightforward"]
                / timings["train_step"][runner.name],
                "speedup_infer": timings["infer_batch"]["straightforward"]
                / timings["infer_batch"][runner.name],
            }
            rows.append(row)
        rows.append(
            {
                "device": device.type,
                "model": "straightforward",
                "preset": f"reference (vs {preset})",
                "precision": "fp32",
                "num_points": num_points,
                "params_m": count_parameters(plain_model),
                "train_step_s": timings["train_step"]["straightforward"],
                "infer_batch_s": timings["infer_batch"]["straightforward"],
                "latency_ms": 1e3 * timings["infer_single"]["straightforward"],
                "speedup_train": 1.0,
                "speedup_infer": 1.0,
            }
        )
        del runners, ours, models
    for row in rows:
        row["train_patterns_s"] = args.batch_size / row["train_step_s"]
        row["infer_patterns_s"] = args.batch_size / row["infer_batch_s"]
        if not args.memory:
            continue
        is_plain = row["model"] == "straightforward"
        spec = {
            "model": "straightforward" if is_plain else "ours",
            "preset": "reference" if is_plain else row["preset"],
            "precision": row["precision"],
            "batch": args.batch_size,
            "threads": torch.get_num_threads(),
            "overrides": overrides,
        }
        if device.type == "cuda":
            row["train_peak_mb"], row["infer_peak_mb"] = cuda_peak_memory(spec, device)
        elif not (
            is_plain
            and any(r.get("train_peak_mb") for r in rows if r["model"] == "straightforward")
        ):
            row["train_peak_mb"] = cpu_peak_memory({**spec, "mode": "train"})
            row["infer_peak_mb"] = cpu_peak_memory({**spec, "mode": "infer"})
        else:  # the straightforward model's memory was measured already
            first = next(
                r for r in rows if r["model"] == "straightforward" and r.get("train_peak_mb")
            )
            row["train_peak_mb"], row["infer_peak_mb"] = (
                first["train_peak_mb"],
                first["infer_peak_mb"],
            )
    return rows


def cuda_peak_memory(spec: dict, device: torch.device) -> tuple[float, float]:
    runner = runner_for(spec, device)
    peaks = []
    for fn in (runner.train_step, runner.infer_batch):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        fn()
        torch.cuda.synchronize(device)
        peaks.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
    return peaks[0], peaks[1]


def format_table(rows: list[dict]) -> str:
    header = (
        "| device | model | preset | precision | params (M) | train step (s) | train patterns/s | "
        "inference patterns/s | batch-1 latency (ms) | peak MB train / infer | "
        "speed-up train / infer |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        memory = "n/a"
        if row.get("train_peak_mb") is not None:
            memory = f"{row['train_peak_mb']:.0f} / {row['infer_peak_mb']:.0f}"
        lines.append(
            f"| {row['device']} | {row['model']} | {row['preset']} | {row['precision']} | "
            f"{row['params_m']:.1f} | {row['train_step_s']:.3f} | {row['train_patterns_s']:.1f} | "
            f"{row['infer_patterns_s']:.1f} | {row['latency_ms']:.1f} | {memory} | "
            f"{row['speedup_train']:.2f}x / {row['speedup_infer']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="small,base,reference", help="comma-separated presets")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed steps per measurement (median)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--devices", default="auto", help="comma-separated: cpu, cuda (auto: cpu + cuda if present)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all cores)"
    )
    parser.add_argument(
        "--num-points", type=int, default=None, help="override the grid length (all models)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny run for CI: small preset, batch 4, one repeat"
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes"
    )
    parser.add_argument(
        "--no-malloc-env", action="store_true", help="do not re-execute with the malloc settings"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.batch_size, args.repeats, args.warmup = "small", 4, 1, 1
        args.memory = False
    args.presets = [p for p in args.presets.split(",") if p]
    args.precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown precision(s) {unknown}; choose from {sorted(PRECISIONS)}")
    if args.batch_size < 2:
        parser.error("--batch-size must be >= 2 (BatchNorm training needs two samples)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return 0
    malloc = {"method": "not requested"}
    if not args.no_malloc_env:
        malloc = configure_malloc(reexec=True)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    devices = (
        args.devices.split(",")
        if args.devices != "auto"
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
        f"{args.repeats} repeats (median)"
    )
    malloc_state = {name: os.environ.get(name) for name in MALLOC_ENV}
    print(
        f"allocator: {malloc['method']}; {malloc_state}; started configured: {malloc_configured()}"
    )
    for device in devices:
        recommended = recommended_autocast_dtype(device)
        print(f"{device}: recommended precision {'bf16 autocast' if recommended else 'fp32'}")
    rows = []
    for device in devices:
        rows += measure_device(torch.device(device), args)
    print(format_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
