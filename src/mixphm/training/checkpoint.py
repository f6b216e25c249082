"""Atomic training checkpoints: written to a temporary file, then renamed over the last one,
so a crash mid-write leaves the previous checkpoint intact. Read with ``weights_only``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    with temporary.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load(path: Path, mmap: bool = False) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none yet. ``mmap`` maps its tensors
    instead of reading them (to read its bookkeeping: a full fine-tuning one is ~370 MB)."""
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=True, mmap=mmap)
    return state


def trained_seconds(path: Path) -> float | None:
    """The training seconds recorded in the checkpoint at ``path`` (None if there is none)."""
    saved = load(path, mmap=True)
    return None if saved is None else float(saved["elapsed"])
