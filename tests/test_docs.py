"""README stays a front page: small, with links that lead somewhere. (docs/ itself is checked by
`mkdocs build --strict` in CI, which fails on a broken link or a page missing from the nav.)"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def local_links(text: str) -> list[str]:
    """Link targets that are files of this repository (no URLs, no in-page anchors)."""
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_at_most_15_kb():
    assert README.stat().st_size <= 15 * 1024, "README.md is a front page: move details to docs/"


def test_readme_links_resolve():
    links = local_links(README.read_text())
    assert links, "README links to no docs page"
    missing = [link for link in links if not (REPO / link).exists()]
    assert missing == []


def test_every_docs_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    listed = {p for p in pages(nav) if p.endswith(".md")}
    present = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert present == listed


@pytest.mark.parametrize("text, expected", [
    ("[a](docs/x.md) [b](https://x.org) [c](#top) [d](docs/y.md#part)", ["docs/x.md", "docs/y.md"]),
    ("no links", []),
])
def test_local_links(text, expected):
    assert local_links(text) == expected
