"""Links into docs/design.md: every ``design.md#<section>`` written in the source tree names a
section heading that exists (the headings are the anchors code points at)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SOURCES = ("README.md", "docs", "benchmarks", "vaebm_fast", "tests", "csrc", "scripts")
SUFFIXES = {".md", ".py", ".cpp", ".cu", ".h", ".cuh", ".sh"}


def _anchor(heading: str) -> str:
    """The fragment a markdown renderer gives a heading (GitHub's rule, ASCII headings)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _sources():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.suffix in SUFFIXES)


pytestmark = pytest.mark.skipif(not DESIGN.is_file(), reason="needs the source tree")


def test_every_link_names_a_section():
    anchors = {_anchor(line[3:]) for line in DESIGN.read_text().splitlines()
               if line.startswith("## ")}
    links = []
    for path in _sources():
        for match in re.finditer(r"design\.md#([\w\-]+)", path.read_text(errors="replace")):
            links.append((path.relative_to(ROOT).as_posix(), match.group(1)))
    assert links, "no links into docs/design.md found: is the source tree complete?"
    dangling = [(path, anchor) for path, anchor in links if anchor not in anchors]
    assert not dangling, f"links to sections docs/design.md does not have: {dangling}"


def test_design_links_within_itself_resolve():
    text = DESIGN.read_text()
    anchors = {_anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    own = re.findall(r"\]\(#([\w\-]+)\)", text)
    assert own and set(own) <= anchors, set(own) - anchors
