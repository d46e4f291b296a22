"""Every link in the README (and the documents it links) points at something in the repository.

A link to a file outside the repository (`../shared/design.md`) works only in the developers'
checkout: a user of the published repository or package gets a dead link.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging_helpers import ROOT

#: [text](target) and [text](target "title"); images too
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)


def _relative_links(document: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not EXTERNAL.match(target)]


def _broken(document: Path) -> list[str]:
    broken = []
    for target in _relative_links(document):
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{document.relative_to(ROOT)}: {target}")
    return broken


def test_given_the_readme_then_every_relative_link_resolves_inside_the_repository():
    links = _relative_links(ROOT / "README.md")
    assert links, "the README links to files of the repository"
    assert _broken(ROOT / "README.md") == []


def test_given_the_documents_the_readme_links_then_their_relative_links_resolve_inside_the_repository_too():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in _relative_links(ROOT / "README.md")}
    documents = sorted(p for p in linked if p.suffix == ".md" and p.is_relative_to(ROOT) and p.exists())
    assert ROOT / "docs" / "design.md" in documents
    assert [b for d in documents for b in _broken(d)] == []
