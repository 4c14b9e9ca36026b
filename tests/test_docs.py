"""The docs a newcomer reads: every link they follow leads to a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_inside_the_repository(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == [], f"{doc.name} links to what is not in the repository"


def test_the_readme_fits_two_screens_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 110
    first_screen = "\n".join(text.splitlines()[:30])
    assert "make run" in first_screen and "make test" in first_screen


def test_the_architecture_page_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "ingest").rglob("*.py"))
               if p.name != "__main__.py" and p.read_text(encoding="utf-8").strip()
               and not (p.name == "__init__.py" and len(p.read_text(encoding="utf-8").splitlines()) < 3)]
    assert [m for m in modules if f"`{m}`" not in text] == []
