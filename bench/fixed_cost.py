"""Fixed cost of a run chain (issue 17, scope 6): seconds a chain spends besides its training steps.

A study of ``--runs`` chains of a one-block ViT pretrained for 2 steps on the smoke data, each then
probed (1-shot) and fine-tuned (an LR grid of two on Ray Tune, then the final retrain, 2 steps each),
one chain at a time on local Ray: a chain's seconds are then almost all fixed cost (process starts,
Train and Tune controllers, MLflow, checkpoints). Prints each chain's seconds (pretraining /
transfer) and the medians, then where each chain's seconds went: the phases between the marks
that ``pipeline/trace.py`` writes when ``PIPELINE_TRACE`` names a file (set here before Ray starts,
so that its workers write them too).

    python bench/fixed_cost.py [--runs 4] [--storage /tmp/fixed_cost]

To compare two commits side by side, run it from each checkout alternately (PYTHONPATH=<checkout>).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.trace import TRACE_ENV

STUDY = """
name: fixedcost
title: fixed cost of a run chain
presets:
  bench:
    description: one-block ViT, 2 steps, probe + 2-LR fine-tuning grid
    dataset:
      name: synth-jft-smoke
      images: 512
      synth: {style: glyphs, images: 512, val_images: 200, classes: 5, exponent: 0.0, max_objects: 1, image_size: 16, seed: 0}
    recipe: {batch_size: 32, base_lr: 0.003, warmup_steps: 1, image_size: 16, min_crop_area: 1.0,
             val_every: 2, checkpoint_every: 2, log_every: 2}
    seeds: SEEDS
    runs:
      - {model: {name: ViT-nano, family: vit, depth: 1, width: 32, heads: 2, mlp_dim: 64, patch_size: 8}, steps: 2}
    transfer:
      fewshot: [digits]
      shots: [1]
      finetune: [digits]
      finetune_lrs: [0.03, 0.1]
      finetune_steps: 2
      finetune_batch_size: 32
      min_crop_area: 1.0
"""


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its descendants (Ray's raylet and workers of a local Ray),
    the ended ones included (counted in their parents' children times once reaped)."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


# (phase, from event, to event): the trace's events (pipeline/trace.py), in a chain's order
PHASES = [("chain start -> pretraining run tracked", "chain started", "pretraining run tracked"),
          ("tracked -> fit started (subset)", "pretraining run tracked", "fit started"),
          ("fit started -> worker process spawned", "fit started", "train worker process started"),
          ("worker process spawned -> its function entered", "train worker process started",
           "train worker function entered"),
          ("function entered -> trainer built", "train worker function entered", "trainer built"),
          ("trainer built -> first step done", "trainer built", "first step done"),
          ("first step -> last step done", "first step done", "last step done"),
          ("last step -> fit returned", "last step done", "fit returned"),
          ("fit returned -> chain pretrained", "fit returned", "chain pretrained"),
          ("pretrained -> few-shot started", "chain pretrained", "fewshot digits started"),
          ("few-shot", "fewshot digits started", "fewshot digits done"),
          ("few-shot done -> fine-tuning started", "fewshot digits done", "finetune digits started"),
          ("fine-tuning started -> first trial entered", "finetune digits started", "trial dev"),
          ("trials (2 dev, 1 final)", "trial dev", "trial done"),
          ("last trial -> fine-tuning done", "trial done", "finetune digits done"),
          ("fine-tuning done -> chain transferred", "finetune digits done", "chain transferred")]


def phases(trace_text: str) -> dict[str, list[float]]:
    """Seconds of each of PHASES per chain, from the trace: the events between a chain's "started"
    and "transferred" marks belong to it (chains run one at a time); "trial dev" is the first dev
    trial's start, "trial done" the last trial's end."""
    events = sorted((float(t), name) for t, _, name in (line.split(" ", 2) for line in trace_text.splitlines()))
    chains: list[dict[str, float]] = []
    for t, name in events:
        key = re.sub(r"^chain \w+ ", "chain ", name)
        if key == "chain started":
            chains.append({})
        if not chains:
            continue
        if key.startswith("trial ") and key.endswith(" finished"):
            chains[-1]["trial done"] = t
        else:
            chains[-1].setdefault("trial dev" if key.startswith("trial dev") else key, t)
    out: dict[str, list[float]] = {}
    for chain in chains:
        for label, a, b in PHASES:
            if a in chain and b in chain:
                out.setdefault(label, []).append(chain[b] - chain[a])
    return out


def phase_table(found: dict[str, list[float]]) -> str:
    lines = ["| phase | median s | per chain |", "|---|---|---|"]
    lines += [f"| {label} | {statistics.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |" for label, v in found.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="chains to time, one at a time (default 4)")
    parser.add_argument("--storage", default=None, help="study storage folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the per-chain seconds to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    import ray

    from pipeline.orchestrate import StudyOptions, run_study
    from pipeline.raycluster import ensure_ray
    from pipeline.spec import load_study
    args = build_parser().parse_args(argv)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fixed_cost_"))
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    study_file = storage / "fixedcost.yaml"
    study_file.write_text(STUDY.replace("SEEDS", json.dumps(list(range(args.runs)))))
    trace_file = storage / "trace.txt"
    os.environ[TRACE_ENV] = str(trace_file)  # before Ray starts: its workers inherit it
    ensure_ray(log_to_driver=False)  # as the study CLI starts a local Ray
    cpu0 = tree_cpu_seconds()
    t0 = time.perf_counter()
    summary = run_study(load_study(str(study_file)), "bench", storage=str(storage),
                        options=StudyOptions(max_concurrent=1, report=False, quiet=True, system_metrics=True))
    wall = time.perf_counter() - t0
    cpu = tree_cpu_seconds() - cpu0
    rows = sorted(summary["results"].values(), key=lambda r: r["id"])
    for r in rows:
        print(f"chain {r['id']}: {r['seconds']:.1f} s (pretraining {r['pretrain_seconds']:.1f} s, "
              f"transfer {r['seconds'] - r['pretrain_seconds']:.1f} s)")
    med = {k: statistics.median(f(r) for r in rows) for k, f in (
        ("chain", lambda r: r["seconds"]), ("pretraining", lambda r: r["pretrain_seconds"]),
        ("transfer", lambda r: r["seconds"] - r["pretrain_seconds"]))}
    print(f"median of {len(rows)} chains: {med['chain']:.1f} s (pretraining {med['pretraining']:.1f} s, "
          f"transfer {med['transfer']:.1f} s); study {wall:.0f} s with data and MLflow set-up; "
          f"failed: {summary['failed'] or 'none'}")
    print(f"CPU seconds of the study (driver, Ray and its workers): {cpu:.0f}, {cpu / len(rows):.1f} per chain")
    out = {"chains": [{k: r[k] for k in ("id", "seconds", "pretrain_seconds")} for r in rows], "median": med, "cpu_seconds": cpu, "wall_seconds": wall}
    ray.shutdown()
    out["phases"] = phases(trace_file.read_text())
    print(phase_table(out["phases"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
