"""The README reads in five minutes and leads to the rest (issue 19): it stays short, keeps the two commands that
.ci/run and a newcomer use, links every page under docs/, and its links into the pages name headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short_and_keeps_the_two_commands():
    assert len(README.splitlines()) <= 220
    assert "bash scripts/serve.sh" in README and "bash scripts/test.sh" in README
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_docs_page_is_linked_from_the_readme():
    links = {link.partition("#")[0] for link in LINK.findall(README)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in links]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_links_into_pages_name_headings_that_exist():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in LINK.findall(page.read_text()):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not anchor or target.suffix != ".md" or not target.exists():
                continue
            headings = re.findall(r"^#+ (.*)$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {link} names no heading"
