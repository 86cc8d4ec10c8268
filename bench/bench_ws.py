"""Weight standardization (BiT's convs): our form (``batch_norm`` over the flattened kernel, as
timm) against the two-pass form it replaced (mean, then the mean square of the centred kernel) and
``torch.var_mean``; alone on kernels, then in whole training steps. Forms alternate (ABC ABC ...)
so that load on the machine hits all alike; medians.

    python bench/bench_ws.py                  # CPU, one thread (issue 30's numbers in RESULTS)
    python bench/bench_ws.py --device cuda    # a GPU: eager, bf16 autocast in the steps
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models.layers as layers  # noqa: E402
from models import build_model, model_spec  # noqa: E402

OURS = layers.standardize_weight


def two_pass(weight: torch.Tensor, eps: float = layers.WS_EPS) -> torch.Tensor:
    centred = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(dim=(1, 2, 3), keepdim=True) + eps)


def var_mean(weight: torch.Tensor, eps: float = layers.WS_EPS) -> torch.Tensor:
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (weight - mean) / torch.sqrt(var + eps)


FORMS = {"batch_norm (ours)": OURS, "two-pass": two_pass, "var_mean": var_mean}
KERNELS = [(64, 3, 7, 7), (256, 64, 1, 1), (512, 512, 3, 3), (2048, 1024, 1, 1)]
STEPS = [("R50x1", 96, 8), ('{"name": "BiT-micro-M", "family": "resnet", "blocks": [1, 1, 1, 1], '
                            '"width_factor": 0.5, "groups": 16}', 32, 64)]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def kernels(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for shape in KERNELS:
        weight = (torch.randn(shape, device=device) * 0.05).requires_grad_()
        reference = two_pass(weight).detach()
        times = {name: [] for name in FORMS}
        for _ in range(repeats):
            for name, form in FORMS.items():
                times[name].append(timed(lambda: form(weight).sum().backward(), device))
        rows.append({"kernel": "x".join(map(str, shape)),
                     **{f"{name} ms": 1e3 * statistics.median(t[1:]) for name, t in times.items()},
                     "max |ours - two-pass|": float((OURS(weight).detach() - reference).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def steps(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for name, size, batch in STEPS:
        spec = model_spec(json.loads(name) if name.startswith("{") else name)
        torch.manual_seed(0)
        model = build_model(spec, num_classes=1000, image_size=size).to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)

        def step():
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        times = {form: [] for form in FORMS}
        for _ in range(repeats):
            for form, fn in FORMS.items():
                layers.standardize_weight = fn
                times[form].append(timed(step, device))
        layers.standardize_weight = OURS
        rows.append({"step": f"{spec.name} {size}px batch {batch}",
                     **{f"{form} ms": 1e3 * statistics.median(t[1:]) for form, t in times.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, {device}, {args.threads} thread(s); medians of {args.repeats - 1}")
    rows = kernels(device, args.repeats) + steps(device, max(3, args.repeats // 2))
    print("\n| kernel or step | " + " | ".join(f"{n} ms" for n in FORMS) + " | two-pass / ours |")
    print("|---|" + "---|" * (len(FORMS) + 1))
    for r in rows:
        ms = [r[f"{n} ms"] for n in FORMS]
        print(f"| {r.get('kernel') or r['step']} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {ms[1] / ms[0]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
