"""Markdown tables, as the result files (summary.md, breakdown.md, curves.md) write them."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> str:
    """A Markdown table: the first ``text_columns`` columns left-aligned, the rest (numbers)
    right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * text_columns + "---:|" * (len(header) - text_columns))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
