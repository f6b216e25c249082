"""The README and docs/ stay true to the committed results.

Every results table copied into README.md or docs/*.md is preceded by a marker naming its
source, ``<!-- table: results/<folder>/summary.md, backbone <name> -->``, and must equal that
table of the summary row for row and cell for cell. README.md must carry the paper-recipe
(paper-v1) table this way, with the command that produced it. Every relative link (images
included) must point to a file or folder that exists, and README.md stays at most 300 lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
HEADLINE = "results/easy-vqa-paper-v1/summary.md"
MAX_README_LINES = 300

MARKER = re.compile(r"<!--\s*table:\s*(\S+),\s*backbone\s+(\S+)\s*-->")
LINK = re.compile(r"(!?)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_TAG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"")

Table = list[list[str]]


def table_at(lines: list[str], start: int) -> Table:
    """The markdown table whose first row is the first table row at or after ``start``:
    its rows (header included, the alignment row left out), each a list of stripped cells."""
    index = start
    while index < len(lines) and not lines[index].lstrip().startswith("|"):
        index += 1
    rows: Table = []
    while index < len(lines) and lines[index].lstrip().startswith("|"):
        cells = [cell.strip() for cell in lines[index].strip().strip("|").split("|")]
        if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            rows.append(cells)
        index += 1
    return rows


def summary_table(summary: Path, backbone: str) -> Table:
    """The table under ``### Backbone: <backbone>`` of a ``summary.md``."""
    lines = summary.read_text().splitlines()
    heading = f"### Backbone: {backbone}"
    assert heading in lines, f"{summary} has no section {heading!r}"
    return table_at(lines, lines.index(heading) + 1)


def copied_tables(document: Path) -> list[tuple[str, str, Table]]:
    """(source summary, backbone, the table that follows the marker) for each marker."""
    lines = document.read_text().splitlines()
    found = []
    for number, line in enumerate(lines):
        match = MARKER.search(line)
        if match:
            found.append((match.group(1), match.group(2), table_at(lines, number + 1)))
    return found


def differences(copy: Table, source: Table) -> list[str]:
    """Every way ``copy`` differs from ``source``: missing, extra or changed rows."""
    problems = []
    copied = {row[0]: row for row in copy}
    original = {row[0]: row for row in source}
    if [row[0] for row in copy] != [row[0] for row in source]:
        problems.append(f"rows {[row[0] for row in copy]} differ from {[row[0] for row in source]}")
    for name, row in original.items():
        if name in copied and copied[name] != row:
            problems.append(f"row {name!r}: {copied[name]} != {row}")
    return problems


def test_readme_carries_the_paper_recipe_table_with_its_command():
    tables = [(src, backbone) for src, backbone, _ in copied_tables(README)]
    assert (HEADLINE, "pretrained") in tables
    command = (ROOT / HEADLINE).read_text().splitlines()[0]
    produced_by = re.fullmatch(r"Produced by `([^`]+)`.*", command)
    assert produced_by, f"{HEADLINE} does not start with the command that produced it"
    assert produced_by.group(1) in README.read_text()


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda p: p.name)
def test_copied_tables_equal_the_committed_summaries(document):
    for source, backbone, copy in copied_tables(document):
        original = summary_table(ROOT / source, backbone)
        assert len(original) > 2, f"{source} ({backbone}) has too few rows to compare"
        assert differences(copy, original) == [], f"{document.name}: {source} ({backbone})"


def test_the_results_report_carries_both_recipes_tables():
    tables = {(src, b) for src, b, _ in copied_tables(ROOT / "docs" / "results.md")}
    assert (HEADLINE, "pretrained") in tables
    assert ("results/easy-vqa/summary.md", "pretrained") in tables


def test_the_headline_table_has_every_method_and_k():
    (copy,) = [t for src, b, t in copied_tables(README) if (src, b) == (HEADLINE, "pretrained")]
    assert copy[0][:3] == ["method", "% trainable", "k=0"]
    assert {"k=16", "k=32", "k=64", "k=100", "k=500", "k=1000"} <= set(copy[0])
    assert {row[0] for row in copy} >= {"zero-shot", "full", "mixphm", "mixphm-ra", "pfeiffer"}


def test_a_changed_cell_or_row_is_caught():
    original = summary_table(ROOT / HEADLINE, "pretrained")
    assert differences([list(row) for row in original], original) == []
    changed = [list(row) for row in original]
    row = next(r for r in changed if r[0] == "mixphm-ra")
    column = changed[0].index("k=64")
    row[column] = row[column].replace("69.2", "69.3")
    assert row[column] != next(r for r in original if r[0] == "mixphm-ra")[column]
    assert differences(changed, original)
    assert differences(changed[:-1], original)  # a row left out
    assert differences([changed[0], changed[2], changed[1], *changed[3:]], original)  # reordered


def relative_targets(document: Path, images_only: bool) -> list[str]:
    """The relative link targets of ``document`` (``#anchor`` alone: the document itself)."""
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    targets = [t for bang, t in LINK.findall(text) if bang or not images_only]
    targets += IMG_TAG.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def anchors(document: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_and_anchors_exist(document):
    for target in relative_targets(document, images_only=False):
        file, _, anchor = target.partition("#")
        path = (document.parent / file).resolve() if file else document
        assert path.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{document.name}: no heading for {target}"


def test_the_readme_and_the_docs_embed_images_that_exist():
    images = relative_targets(README, images_only=True)
    assert "results/easy-vqa-paper-v1/accuracy_vs_k_pretrained.png" in images
    for document in [README, *DOCS]:
        for target in relative_targets(document, images_only=True):
            assert (document.parent / target).resolve().is_file(), f"{document.name}: {target}"


def test_the_docs_exist():
    names = {p.name for p in DOCS}
    assert {"results.md", "reproducing.md", "backbones.md", "method.md"} <= names


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
