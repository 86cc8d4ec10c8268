"""A pretraining checkpoint: one folder holding ``state.pt`` (model, optimizer, schedule, the step,
the best validation values, every rank's RNG state and the resolved RunSpec), written by the loop
(``pipeline.pretrain.loop``) and read back as data (tensors and plain values only) by a resumed run
and by the transfer stages (``pipeline.transfer``)."""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import storage as store

STATE_FILE = "state.pt"
# Ray Train's record of the checkpoints it registered in a run's folder; a resumed run reads only these.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def state_file(checkpoint: str | os.PathLike) -> Path:
    """The state file of a pretraining checkpoint given as its folder or as the file itself."""
    path = Path(checkpoint)
    return path / STATE_FILE if path.is_dir() else path


class CheckpointError(ValueError):
    """A file that is not a pretraining checkpoint this pipeline can read."""


CHECKPOINT_KEYS = frozenset({"model", "optimizer", "schedule", "step", "best", "rng", "spec"})


def load_state(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A pretraining checkpoint's state, read as data: ``weights_only`` admits tensors and plain
    values only, so a crafted file cannot run code while it is read; anything else is refused."""
    path = state_file(checkpoint)
    what = (f"a pretraining checkpoint is a folder holding {STATE_FILE}, written by pipeline.pretrain "
            "(tensors and plain values only)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a checkpoint this pipeline reads ({reason[:200]}): {what}; files "
                              "that need code to load are refused") from None
    missing = sorted(CHECKPOINT_KEYS - (set(state) if isinstance(state, dict) else set()))
    if missing:
        raise CheckpointError(f"{path} holds no pretraining state (missing {', '.join(missing)}): {what}")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (what a ``weights_only`` load reads back)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    n = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



def drop_unregistered(run_dir: str) -> list[str]:
    """Remove the checkpoint folders of a Ray Train run folder that Ray Train never registered: those
    a full disk, a lost store or a killed process cut short while they were written (a 0-byte or
    truncated ``state.pt``). No run reads them (a resumed run restores a registered one), so they
    only take space. Call it while no attempt of the run is writing. Returns the folders removed."""
    names = store.listdir(run_dir)
    snapshot = store.join(run_dir, RAY_SNAPSHOT)
    registered = set()
    if RAY_SNAPSHOT in names:
        try:
            registered = {c["checkpoint_dir_name"] for c in json.loads(store.read_text(snapshot))["checkpoint_results"]}
        except (OSError, ValueError, KeyError, TypeError):
            return []   # a snapshot this code cannot read: nothing is known to be unregistered
    stray = [store.join(run_dir, n) for n in names if n.startswith("checkpoint_") and n != RAY_SNAPSHOT
             and n not in registered]
    for folder in stray:
        store.delete_folder(folder)
    return stray
