"""Task subject/description rendering: jinja2 in a sandbox, strict about undefined names.

Templates come only from files (the packaged `playbooks/templates/` or a
`templates/` directory next to a user's definitions file). CRM text (account
names, drivers) is passed in as *values* and is never compiled as a template,
so an account called `{{ 7*7 }}` stays literally that. Autoescape is off because
the output is plain CRM text, not HTML. `StrictUndefined` turns a typo in a
template into an error at load time (see `check_template`), not a task that
reads "None".
"""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

PACKAGED_TEMPLATES = Path(__file__).with_name("templates")


class TemplateProblem(ValueError):
    """A template is missing or does not render; the message names the template."""


def _num(value: Any) -> str:
    """A score or delta as a short number: 42, 41.5, or 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def _money(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return f"${float(value):,.0f}"
    except (TypeError, ValueError):
        return str(value)


class TemplateRenderer:
    """Renders playbook templates; one environment per set of search paths."""

    def __init__(self, search_paths: list[Path] | None = None):
        paths = [str(p) for p in (search_paths or [])] + [str(PACKAGED_TEMPLATES)]
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(paths),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
        )
        self.env.filters["num"] = _num
        self.env.filters["money"] = _money

    def render(self, template_name: str, context: dict[str, Any]) -> str:
        try:
            text = self.env.get_template(template_name).render(**context)
        except TemplateError as e:
            raise TemplateProblem(f"template {template_name}: {type(e).__name__}: {e}") from None
        return text.strip()


def plain(value: Any) -> Any:
    """pandas/numpy scalars -> plain Python (NA -> None) so templates see ordinary values."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _date_text(value: Any) -> str | None:
    value = plain(value)
    if value is None:
        return None
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m-%d")
    ts = pd.to_datetime(value, errors="coerce")
    return None if pd.isna(ts) else ts.strftime("%Y-%m-%d")


def split_drivers(value: Any) -> list[str]:
    """Drivers arrive as a list or as one '; '-separated string; always a list of short texts."""
    value = plain(value)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(";") if part.strip()]


def task_context(row: dict[str, Any], *, playbook_title: str, sla_hours: float, due_at: datetime, task_key: str) -> dict[str, Any]:
    """The variables every template may use (documented in playbooks/default.yaml's templates)."""
    get = lambda k: plain(row.get(k))  # noqa: E731
    return {
        "account_name": str(get("name") or get("account_id") or ""),
        "account_id": str(get("account_id") or ""),
        "crm": get("crm"),
        "segment": get("segment"),
        "owner_email": get("owner_email"),
        "score": get("score"),
        "band": get("band"),
        "previous_score": get("previous_score"),
        "previous_band": get("previous_band"),
        "confidence": get("confidence"),
        "delta_30d": get("delta_30d"),
        "delta_90d": get("delta_90d"),
        "momentum": get("momentum"),
        "drivers": split_drivers(row.get("drivers")),
        "arr": get("arr"),
        "renewal_date": _date_text(row.get("renewal_date")),
        "days_to_renewal": get("days_to_renewal"),
        "playbook_title": playbook_title,
        "sla_hours": _num(sla_hours),
        "due_at": due_at.strftime("%Y-%m-%d %H:%M UTC"),
        "task_key": task_key,
    }


SAMPLE_ROW = {
    "account_id": "sf:001000000000001",
    "crm": "salesforce",
    "name": "Sample Co",
    "segment": "enterprise",
    "owner_email": "csm@example.com",
    "score": 38.0,
    "band": "Red",
    "previous_score": 55.0,
    "previous_band": "Yellow",
    "confidence": 0.9,
    "delta_30d": -17.0,
    "delta_90d": -20.0,
    "momentum": "down",
    "drivers": "Logins down to 0.4/user/week; 2 escalations in 90 days",
    "arr": 120000.0,
    "renewal_date": "2027-01-15",
    "days_to_renewal": 45,
}


def check_template(renderer: TemplateRenderer, template_name: str) -> str | None:
    """Render once with a full sample context, so a bad template fails at load time; returns the problem."""
    ctx = task_context(SAMPLE_ROW, playbook_title="Sample", sla_hours=24, due_at=datetime(2027, 1, 1), task_key="sample")
    try:
        renderer.render(template_name, ctx)
    except TemplateProblem as e:
        return str(e)
    return None
