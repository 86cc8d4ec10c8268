"""Study files for tests: the shipped smoke preset, changed, as a study of its own (its own MLflow
experiment), so that a test can make a run longer (a kill lands mid-run) or a study smaller."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]


def smoke_variant(path: Path, name: str, change: Callable[[dict], None], title: str | None = None) -> Path:
    """studies/scaling.yaml's ``smoke`` preset, passed to ``change`` (it edits the dict in place),
    written to ``path`` as study ``name`` with that preset alone; returns ``path``."""
    data = yaml.safe_load((ROOT / "studies" / "scaling.yaml").read_text())
    smoke = data["presets"]["smoke"]
    change(smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "title": title or data["title"], "presets": {"smoke": smoke}}))
    return path
