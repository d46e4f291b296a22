"""Helpers of the report's browser tests: open a file in Chromium (Playwright), read figures, keep screenshots."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# As root in a container: no sandbox, no GPU, and none of Chromium's own network traffic.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

@dataclass
class OpenedPage:
    """A page Chromium loaded, with every console message, page error and network request it made."""

    page: object
    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "pageerror")]

    def close(self) -> None:
        self.page.context.close()


def open_page(browser, path: Path, fragment: str = "", *, wait_ready: bool = True, width: int = 1400) -> OpenedPage:
    """Load `path` from disk (file://) in a fresh context; requests other than the file itself are refused."""
    context = browser.new_context(viewport={"width": width, "height": 1000})
    opened = OpenedPage(context.new_page())
    page = opened.page
    page.on("console", lambda m: opened.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: opened.console.append(("pageerror", str(e))))

    def route(r):
        opened.requests.append(r.request.url)
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page.goto(path.as_uri() + fragment)
    if wait_ready:
        page.wait_for_function("document.body.dataset.ready === '1' || document.body.dataset.ready === 'error'", timeout=60_000)
        assert page.evaluate("document.body.dataset.ready") == "1", opened.console
    return opened


def shot(page, name: str) -> Path:
    """A full-page screenshot kept as a test artefact (test-artifacts/)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    page.screenshot(path=str(target), full_page=True)
    return target


def apply_filter(page, select_id: str, label: str) -> None:
    """Choose the option whose text is `label` in a filter <select>; the page redraws synchronously."""
    value = page.evaluate(
        "([id, label]) => [...document.getElementById(id).options].find(o => o.text === label).value", [select_id, label])
    page.select_option(f"#{select_id}", value)


def kpi(page, name: str) -> str:
    return page.get_attribute(f"#kpi-{name}", "data-value")


def band_rows(page) -> dict[str, int]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#band-table tr[data-band]')]
        .map(r => [r.dataset.band, +r.dataset.accounts]).filter(([, n]) => n > 0))""")


SF_URL = re.compile(r"^https://[^/]+/lightning/r/(Account|Opportunity|Task)/[A-Za-z0-9]{15,18}/view$")
HS_URL = re.compile(r"^https://app\.hubspot\.com/contacts/(\d+)/record/(0-2|0-3|0-27)/(\d+)$")
