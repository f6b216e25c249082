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


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none yet."""
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state


def trained_seconds(path: Path) -> float | None:
    """The training seconds recorded in the checkpoint at ``path`` (None if there is none);
    memory-mapped, so a full fine-tuning checkpoint's tensors are not read."""
    if not path.is_file():
        return None
    return float(torch.load(path, weights_only=True, mmap=True)["elapsed"])
