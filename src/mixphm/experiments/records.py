"""Finding finished runs on disk: the folders holding a ``result.json``, filtered by k and
seed. What the commands that read finished runs (``breakdown``, ``curves``) start from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Run = tuple[Path, dict[str, Any]]
"""A finished run's folder and its result record (``result.json``)."""


def finished_runs(
    paths: Sequence[Path], ks: Sequence[int] | None = None, seeds: Sequence[int] | None = None
) -> list[Run]:
    """Each path that is a finished run, or else every finished run beneath it; only runs
    with these ``ks`` and ``seeds`` when given."""
    wanted = {
        field: list(values) for field, values in (("k", ks), ("seed", seeds)) if values is not None
    }
    condition = " and ".join(f"{field} in {values}" for field, values in wanted.items())
    runs: list[Run] = []
    for path in paths:
        found = (
            [path]
            if (path / "result.json").is_file()
            else sorted(p.parent for p in path.rglob("result.json"))
        )
        loaded = ((run, json.loads((run / "result.json").read_text())) for run in found)
        records = [
            (run, result)
            for run, result in loaded
            if all(result[field] in values for field, values in wanted.items())
        ]
        if not records:
            with_condition = f" with {condition}" if condition else ""
            raise FileNotFoundError(f"{path}: no finished run{with_condition} in or under it")
        runs += records
    return runs
