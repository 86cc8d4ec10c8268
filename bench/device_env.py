"""The Python packages a lent GPU machine lacks, packed here to be carried there (issue 30).

The device machines' image has torch, numpy, pyarrow, pandas, seaborn, timm ... but not Ray,
MLflow, fvcore or pydantic (bench/device_image_packages.txt); it reaches no registry, and one call
carries at most 64 MiB, the working tree included. Ray's wheel alone is 79 MB. So ``build`` resolves
our pyproject's dependencies (torch left out: the image's CUDA build is used) for the image's
Python, keeps those the image does not hold, installs them into a folder, leaves out what no run
there reads (Ray's Java jars, MLflow's web UI bundle) and packs the folder with xz:

    python bench/device_env.py build               # here: .devenv/site.tar.xz (about 50 MB), 2-3 minutes
    python bench/device_env.py check               # there, after unpacking (bench/gpu_session.sh does both)

``check`` imports what the pipeline imports and lists every installed requirement that another
installed package does not accept (the image's versions are not ours: a mismatch is named, not fatal).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = ROOT / "bench" / "device_image_packages.txt"
DEVICE_PYTHON = "3.12"  # CPython 3.12.3 on the image
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64"]
SDIST_ONLY = ["fvcore", "iopath"]  # pure Python, published without wheels: built here
LEFT_OUT = ["ray/jars", "mlflow/server/js"]  # Ray's Java workers; MLflow's UI bundle (no server runs there)
CARRY_LIMIT_MIB = 64  # one call's working tree, carried paths included
IMPORTS = ["ray", "ray.train", "ray.train.torch", "ray.tune", "ray.data", "mlflow", "mlflow.store.tracking.sqlalchemy_store",
           "fvcore.nn", "pydantic", "simplejpeg", "sqlalchemy", "alembic", "pipeline.study", "pipeline.pretrain",
           "pipeline.transfer"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip {' '.join(args[:3])} ... failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def target_flags() -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def requirements(work: Path) -> tuple[Path, Path]:
    """Our runtime requirements (torch left out) and the tested pins (constraints.txt, torch left out)."""
    from packaging.requirements import Requirement
    deps = [Requirement(d.split("#")[0]) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    req, cons = work / "requirements.txt", work / "constraints.txt"
    for path, reqs in ((req, deps), (cons, pins)):
        path.write_text("".join(f"{r}\n" for r in reqs if canonical(r.name) != "torch"))
    return req, cons


def missing_on_image(report: dict) -> list[str]:
    """name==version of each resolved package the image does not hold."""
    have = {canonical(line.strip()) for line in IMAGE_PACKAGES.read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    return sorted(f"{p['metadata']['name']}=={p['metadata']['version']}" for p in report["install"]
                  if canonical(p["metadata"]["name"]) not in have)


def build(out: Path) -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="device_env-") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        req, cons = requirements(work)
        pins = {canonical(line.split("==")[0]): line for line in cons.read_text().splitlines()}
        pip("wheel", "-q", "--no-deps", "-w", str(wheels), *[pins.get(n, n) for n in SDIST_ONLY])
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(work / "report.json"),
            "--target", str(work / "unused"), "--find-links", str(wheels), *target_flags(),
            "-c", str(cons), "-r", str(req))
        need = missing_on_image(json.loads((work / "report.json").read_text()))
        print(f"[device_env] {len(need)} packages the image lacks: {' '.join(need)}", flush=True)
        carried, site = work / "carried", work / "site"
        pip("download", "-q", "--no-deps", "--find-links", str(wheels), *target_flags(), "-d", str(carried), *need)
        pip("install", "-q", "--no-deps", "--no-compile", *target_flags(), "--platform", "any", "--target", str(site),
            *map(str, carried.glob("*.whl")))
        for path in LEFT_OUT:
            shutil.rmtree(site / path)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / "site.tar.xz"
        print(f"[device_env] packing {sum(f.stat().st_size for f in site.rglob('*') if f.is_file()) / 2**20:.0f} MiB "
              "with xz (about a minute) ...", flush=True)
        subprocess.run(["tar", "-cJf", str(archive), "-C", str(site), "."], check=True,
                       env={**os.environ, "XZ_OPT": "-9 -T0"})
    (out / "packages.txt").write_text("\n".join(need) + "\n")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tree = sum((ROOT / path).stat().st_size for path in tracked.split("\0") if (ROOT / path).is_file())
    total = (archive.stat().st_size + tree) / 2**20
    print(f"[device_env] {archive}: {archive.stat().st_size / 2**20:.1f} MiB; with the tracked tree "
          f"{total:.1f} of the {CARRY_LIMIT_MIB} MiB a call carries; {time.perf_counter() - start:.0f} s")
    if total > CARRY_LIMIT_MIB - 2:
        print(f"[device_env] too large to carry: leave more out (LEFT_OUT in {Path(__file__).name})", file=sys.stderr)
        return 1
    return 0


def check() -> int:
    """Import what the pipeline imports; name requirements the installed versions do not meet."""
    from importlib import metadata

    from packaging.requirements import Requirement
    failed = []
    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as err:  # every failure, not only the first
            failed.append(f"{module}: {err!r}")
    installed = {canonical(d.metadata["Name"]): d for d in metadata.distributions() if d.metadata["Name"]}
    mismatches = []
    for name in ("ray", "mlflow", "mlflow-skinny", "fvcore", "pydantic", "opentelemetry-proto", "opentelemetry-sdk"):
        for text in (installed[name].requires or []) if name in installed else []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            dist = installed.get(canonical(req.name))
            if dist is not None and not req.specifier.contains(dist.version, prereleases=True):
                mismatches.append(f"{name} wants {req}, has {dist.version}")
    import torch
    versions = ", ".join(f"{n} {installed[n].version if n in installed else 'missing'}" for n in ("ray", "mlflow"))
    print(f"[device_env] python {sys.version.split()[0]}, torch {torch.__version__}, cuda "
          f"{torch.cuda.is_available()}; {versions}")
    for line in mismatches:
        print(f"[device_env] version mismatch (not fatal): {line}")
    for line in failed:
        print(f"[device_env] IMPORT FAILED {line}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "check"])
    parser.add_argument("--out", type=Path, default=ROOT / ".devenv", help="build: the folder of site.tar.xz")
    args = parser.parse_args()
    return build(args.out) if args.action == "build" else check()


if __name__ == "__main__":
    sys.exit(main())
