"""A tiny DOM reader for the report tests (stdlib html.parser; no extra dependency).

Collects every element's tag, attributes, the ids of its ancestors and its
text, which is all the tests need to read the `data-*` figures and check that
charts are present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    ancestors: list["Element"]
    children: list["Element"] = field(default_factory=list)
    content: list = field(default_factory=list)  # text pieces and child elements, in document order

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.content)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def within(self, element_id: str) -> bool:
        return any(a.attrs.get("id") == element_id for a in self.ancestors)

    def descendants(self) -> list["Element"]:
        out = []
        for c in self.children:
            out.append(c)
            out.extend(c.descendants())
        return out

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: (v or "") for k, v in attrs}, list(self.stack))
        if self.stack:
            self.stack[-1].children.append(el)
            self.stack[-1].content.append(el)
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag, attrs):
        el = Element(tag, {k: (v or "") for k, v in attrs}, list(self.stack))
        if self.stack:
            self.stack[-1].children.append(el)
            self.stack[-1].content.append(el)
        self.elements.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1].content.append(data)


def parse(html: str) -> list[Element]:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.elements


def by_id(elements: list[Element], element_id: str) -> Element:
    found = [e for e in elements if e.attrs.get("id") == element_id]
    assert len(found) == 1, f"expected one element #{element_id}, found {len(found)}"
    return found[0]


def rows(elements: list[Element], table_id: str, attr: str) -> list[Element]:
    """The `tr` elements carrying `attr` inside the element with id `table_id`, in document order."""
    return [e for e in elements if e.tag == "tr" and attr in e.attrs and e.within(table_id)]


def charts(elements: list[Element]) -> list[Element]:
    return [e for e in elements if e.tag == "figure" and "chart" in e.classes]


def chart_is_drawn(figure: Element) -> bool:
    """An inline <svg> with a positive viewBox and at least one drawn path (or a reference to one)."""
    svgs = [d for d in figure.descendants() if d.tag == "svg"]
    if len(svgs) != 1:
        return False
    box = svgs[0].attrs.get("viewbox") or svgs[0].attrs.get("viewBox") or ""
    parts = [float(p) for p in box.split()] if box else []
    if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
        return False
    marks = [d for d in svgs[0].descendants() if (d.tag == "path" and len(d.attrs.get("d", "")) > 10) or d.tag == "use"]
    return len(marks) > 0
