"""Benchmark forward + backward of the PhysMoE loss wrappers on CPU (or another device).

    python scripts/benchmark_loss.py                 # B=64, K=8, C=230, D=1024, 2 threads
    python scripts/benchmark_loss.py --components    # also time each loss term alone
    python scripts/benchmark_loss.py --quick         # tiny run (CI smoke test)

Each case runs ``--warmup`` untimed iterations, then ``--repeats`` timed ones (forward +
backward of the total loss, gradients zeroed in between), the cases alternating; the table
gives the median, the minimum and the 90th percentile in milliseconds. The target is a median
below 20 ms for ``physmoe`` at the default sizes on our 2-core CPU. Inputs are random; labels are
validated once (``validate=False``), as a training loop that validated its data would run the
loss.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from physmoe.crystallography import NUM_CRYSTAL_SYSTEMS, rule_similarity_matrix, sg_to_sys_map
from physmoe.loss import HardNegativeMining_Proto, build_loss, gated_ensemble_logits

TARGET_MS = 20.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--feat-dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", action="store_true", help="run the loss inside bf16 autocast")
    parser.add_argument("--components", action="store_true", help="also time each loss term alone")
    parser.add_argument("--quick", action="store_true", help="B=8, D=64, 2 warm-up, 5 repeats")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_inputs(
    batch: int, num_experts: int, num_classes: int, feat_dim: int, device: torch.device
) -> dict:
    gating = torch.softmax(torch.randn(batch, num_experts, device=device), dim=1)
    return {
        "features": torch.randn(batch, feat_dim, device=device, requires_grad=True),
        "sys_logits": torch.randn(batch, NUM_CRYSTAL_SYSTEMS, device=device, requires_grad=True),
        "expert_logits": torch.randn(
            batch, num_experts, num_classes, device=device, requires_grad=True
        ),
        "gating_weights": gating.requires_grad_(),
    }


def time_ms(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds per call of every step; the steps alternate, so load spikes on a shared
    machine hit all cases alike."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarise(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    return (
        statistics.median(ordered),
        ordered[0],
        ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
    )


def main() -> None:
    args = parse_args()
    if args.quick:
        args.batch_size, args.feat_dim, args.warmup, args.repeats = 8, 64, 2, 5
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    num_classes = 230
    cfg = SimpleNamespace(
        num_experts=args.num_experts,
        tail_expert_ids=list(range(args.num_experts // 2, args.num_experts)),
        feat_dim=args.feat_dim,
    )
    rule_matrix, sg_to_sys = rule_similarity_matrix(), sg_to_sys_map()
    class_prior = torch.rand(num_classes) + 0.01
    outputs = make_inputs(args.batch_size, args.num_experts, num_classes, args.feat_dim, device)
    labels = torch.randint(0, num_classes, (args.batch_size,), device=device)
    targets = {"labels": labels}

    miner = HardNegativeMining_Proto(num_classes, args.feat_dim).to(device)
    miner.update_prototypes(outputs["features"].detach(), labels)
    miner.update_confusion_matrix(outputs["expert_logits"].detach().mean(dim=1), labels)

    cases = {
        "physmoe": ("physmoe", {}),
        "physmoe + HNM (lambda_hnm=0.1)": ("physmoe", {"lambda_hnm": 0.1}),
        "physmoe + logit adjustment (tau=1)": ("physmoe", {"tau": 1.0}),
        "physmoe_no_contrast": ("physmoe_no_contrast", {}),
        "scheme2": ("scheme2", {}),
        "cross_entropy": ("cross_entropy", {}),
        "balanced_softmax": ("balanced_softmax", {}),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast)
    steps: dict[str, Callable[[], None]] = {}
    for name, (preset, overrides) in cases.items():
        loss_fn = build_loss(
            preset,
            cfg,
            rule_matrix,
            sg_to_sys,
            class_prior=class_prior,
            validate=False,
            **overrides,
        ).to(device)
        parameters = [*outputs.values(), *loss_fn.parameters()]

        def step(loss_fn: torch.nn.Module = loss_fn, parameters: list = parameters) -> None:
            for tensor in parameters:
                tensor.grad = None
            with autocast:
                total, _ = loss_fn(outputs, targets, hard_negative_miner=miner)
            total.backward()

        steps[name] = step

    if args.components:
        wrapper = build_loss("physmoe", cfg, rule_matrix, sg_to_sys, validate=False).to(device)
        features, logits = outputs["features"], outputs["expert_logits"]
        ensemble = gated_ensemble_logits(logits, outputs["gating_weights"]).detach()
        components = {
            "  L_scl": lambda: wrapper.contrastive(
                features, labels, wrapper.rule_matrix, wrapper.positive_class_mask
            ),
            "  L_dol": lambda: wrapper.icl.division_of_labor_loss(logits, labels),
            "  L_col": lambda: wrapper.icl.collaboration_loss(logits, ensemble),
            "  L_sys + L_sg": lambda: sum(
                wrapper.hierarchical(outputs["sys_logits"], ensemble, labels)
            ),
            "  L_reg": lambda: wrapper.center_loss(features, labels),
            "  L_hnm": lambda: miner.compute_contrastive_loss(features, labels),
        }
        for name, loss in components.items():

            def step(loss: Callable[[], torch.Tensor] = loss) -> None:
                loss().backward()

            steps[name] = step

    times = time_ms(steps, args.warmup, args.repeats, device)
    rows = [(name, *summarise(values)) for name, values in times.items()]

    print(
        f"forward + backward, B={args.batch_size} K={args.num_experts} C={num_classes} "
        f"D={args.feat_dim}, device={device}, threads={torch.get_num_threads()}, "
        f"autocast={'bf16' if args.autocast else 'off'}, {args.repeats} repeats "
        f"after {args.warmup} warm-up"
    )
    width = max(len(row[0]) for row in rows)
    print(f"{'case':<{width}}  {'median ms':>9}  {'min ms':>8}  {'p90 ms':>8}")
    for name, median, minimum, p90 in rows:
        print(f"{name:<{width}}  {median:9.2f}  {minimum:8.2f}  {p90:8.2f}")
    physmoe_median = rows[0][1]
    if args.quick or (args.batch_size, args.num_experts, args.feat_dim) != (64, 8, 1024):
        print(f"(the {TARGET_MS:.0f} ms target applies to B=64, K=8, D=1024)")
    else:
        verdict = "meets" if physmoe_median < TARGET_MS else "MISSES"
        print(f"physmoe median {physmoe_median:.2f} ms {verdict} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
