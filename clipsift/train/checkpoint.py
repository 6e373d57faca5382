"""Training checkpoints: atomic writes, the newest-checkpoint pointer, RNG state, resume checks.

A checkpoint is one `torch.save` dict (model, optimizer, scaler, run position, RNG states,
data fingerprint, architecture, metric history) read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsift.errors import TrainingError

CHECKPOINT_FORMAT = "clipsift-train-checkpoint/1"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(payload: dict[str, Any], path: Path, keep: int) -> None:
    """Write atomically (tmp + rename) so a kill never leaves a torn checkpoint; point
    latest.txt at it and keep only the `keep` newest."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    (path.parent / "latest.tmp").write_text(path.name, encoding="utf-8")
    os.replace(path.parent / "latest.tmp", path.parent / "latest.txt")
    ckpts = sorted(path.parent.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    for old in ckpts[:-keep]:
        old.unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint latest.txt names, else the newest .pt in OUT/checkpoints."""
    folder = out / "checkpoints"
    pointer = folder / "latest.txt"
    if pointer.is_file() and (folder / pointer.read_text(encoding="utf-8").strip()).is_file():
        return folder / pointer.read_text(encoding="utf-8").strip()
    ckpts = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    return ckpts[-1] if ckpts else None


def read_checkpoint(path: Path, model_cfg_json: str) -> dict[str, Any]:
    """Load and check a checkpoint: ours, and of the architecture `model_cfg_json`."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:  # torn or foreign file: say which and why
        raise TrainingError(f"cannot read checkpoint {path}: {ex}") from ex
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a clipsift training checkpoint")
    if ck["model_cfg"] != model_cfg_json:
        raise TrainingError(f"{path} was trained with another architecture than this run's")
    return ck


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint being resumed (or by a final pass)."""
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    kept = [r for r in rows if r.get("step", 0) <= step and not r.get("final")]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def save_start(module: torch.nn.Module, path: Path) -> None:
    """The starting weights as safetensors (for WiSE-FT at the end of a fine-tune)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(path))
