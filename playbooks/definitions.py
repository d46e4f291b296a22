"""Playbook definitions: loaded from YAML, validated once, with errors naming the playbook and key.

The packaged `playbooks/default.yaml` holds the seeds' four playbooks; a user
points `playbooks.definitions` at their own file (templates are then looked up
in a `templates/` directory next to it first, then in the packaged ones), and
`playbooks.enabled` chooses which run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from healthsync.config.model import Strict
from healthsync.config.settings import ConfigError, Settings, format_validation_error
from healthsync.playbooks.render import TemplateRenderer, check_template
from healthsync.playbooks.triggers import Condition, ConditionError, parse_condition

PACKAGED_DEFINITIONS = Path(__file__).with_name("default.yaml")

#: playbook names start task keys (`<playbook>:<account_id>:<date>`), so no colons or spaces
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class TemplateNames(Strict):
    subject: str
    description: str


class BandOverride(Strict):
    """Per-band SLA and ladder top (seed 003: Red within 24 h up to the VP; Yellow within a week, the manager)."""

    sla_hours: float | None = Field(None, gt=0)
    escalate_to: str | None = None


class PlaybookSpec(Strict):
    name: str
    title: str
    condition: dict[str, Any]
    trigger: Literal["crossing", "state"] = Field(
        "crossing", description="crossing: fire when the condition turns true between two scored runs; state: whenever it holds"
    )
    backlog: bool = Field(
        True, description="crossing only: an account already in the condition when first evaluated (no history) opens too"
    )
    sla_hours: float = Field(gt=0)
    priority: Literal["high", "normal", "low"] = "normal"
    escalate_to: str = Field("owner", description="highest escalation.ladder level this playbook reaches")
    band_overrides: dict[str, BandOverride] = Field(default_factory=dict, description="band name -> sla_hours / escalate_to")
    templates: TemplateNames

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} must be lower_snake_case (letters, digits, _), at most 40 characters")
        return v


class PlaybookFile(Strict):
    version: int = 1
    playbooks: list[PlaybookSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Playbook:
    """One validated playbook, ready to evaluate and render."""

    name: str
    title: str
    condition: Condition
    sla_hours: float
    priority: str
    escalate_to: str
    subject_template: str
    description_template: str
    band_overrides: tuple[tuple[str, float | None, str | None], ...] = ()  # (band, sla_hours, escalate_to)
    trigger: str = "crossing"  # crossing | state
    backlog: bool = True  # crossing: open for accounts already in the condition at their first evaluation

    def sla_for(self, band: str | None) -> float:
        """The SLA in hours for an account in `band` (the band it had when the episode opened)."""
        for name, hours, _ in self.band_overrides:
            if name == band and hours is not None:
                return hours
        return self.sla_hours

    def top_for(self, band: str | None) -> str:
        """The highest ladder level for an account now in `band` (a Yellow account turning Red climbs further)."""
        for name, _, level in self.band_overrides:
            if name == band and level is not None:
                return level
        return self.escalate_to

    def possible_tops(self) -> set[str]:
        return {self.escalate_to} | {level for _, _, level in self.band_overrides if level}


@dataclass
class PlaybookSet:
    playbooks: list[Playbook]
    renderer: TemplateRenderer

    def by_name(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)


def load_playbooks(settings: Settings) -> PlaybookSet:
    """The enabled playbooks of `settings`; raises ConfigError listing every problem.

    Cached per (file, its modification time, enabled list, ladder levels): the
    scheduler calls this every 15 minutes and compiling templates is not free.
    """
    path = Path(settings.playbooks.definitions) if settings.playbooks.definitions else PACKAGED_DEFINITIONS
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    levels = tuple(step.level for step in settings.escalation.ladder)
    bands = tuple(b.name for b in settings.model.bands)
    return _load_cached(str(path), stamp, bool(settings.playbooks.definitions), tuple(settings.playbooks.enabled), levels, bands)


@lru_cache(maxsize=16)
def _load_cached(
    path_text: str, _stamp, user_file: bool, enabled_names: tuple[str, ...], ladder_levels: tuple[str, ...], band_names: tuple[str, ...]
) -> PlaybookSet:
    path = Path(path_text)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError([f"playbooks.definitions: cannot read {path}: {e.strerror}"], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"playbooks.definitions: {path} is not valid YAML: {getattr(e, 'problem', e)}"], source) from None
    try:
        parsed = PlaybookFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([f"playbooks file: {p}" for p in _named(format_validation_error(e), raw)], source) from None

    search = [path.parent / "templates"] if user_file else []
    renderer = TemplateRenderer(search)
    problems: list[str] = []
    seen: set[str] = set()
    built: list[Playbook] = []
    for spec in parsed.playbooks:
        where = f"playbooks.{spec.name}"
        if spec.name in seen:
            problems.append(f"{where}: defined twice")
            continue
        seen.add(spec.name)
        try:
            condition = parse_condition(spec.condition, f"{where}.condition")
        except ConditionError as e:
            problems.append(str(e))
            continue
        if spec.escalate_to not in ladder_levels:
            problems.append(f"{where}.escalate_to: {spec.escalate_to!r} is not a level of escalation.ladder ({', '.join(ladder_levels)})")
        for band, override in spec.band_overrides.items():
            if band not in band_names:
                problems.append(f"{where}.band_overrides.{band}: unknown band (model.bands: {', '.join(band_names)})")
            if override.escalate_to is not None and override.escalate_to not in ladder_levels:
                problems.append(
                    f"{where}.band_overrides.{band}.escalate_to: {override.escalate_to!r} is not a level of escalation.ladder ({', '.join(ladder_levels)})"
                )
        for key, template in (("subject", spec.templates.subject), ("description", spec.templates.description)):
            problem = check_template(renderer, template)
            if problem:
                problems.append(f"{where}.templates.{key}: {problem}")
        built.append(
            Playbook(spec.name, spec.title, condition, spec.sla_hours, spec.priority, spec.escalate_to,
                     spec.templates.subject, spec.templates.description,
                     tuple((band, o.sla_hours, o.escalate_to) for band, o in spec.band_overrides.items()),
                     spec.trigger, spec.backlog)
        )
    unknown = [n for n in enabled_names if n not in seen]
    if unknown:
        problems.append(f"playbooks.enabled: unknown playbook(s) {unknown} (defined: {sorted(seen)})")
    if problems:
        raise ConfigError(problems, source)
    enabled = set(enabled_names)
    return PlaybookSet([p for p in built if p.name in enabled], renderer)


def _named(problems: list[str], raw: Any) -> list[str]:
    """`playbooks.2.sla_hours: ...` -> `playbooks.2 (renewal_risk).sla_hours: ...` so the playbook is named."""
    items = raw.get("playbooks") if isinstance(raw, dict) else None
    out = []
    for p in problems:
        m = re.match(r"^playbooks\.(\d+)(.*)$", p)
        if m and isinstance(items, list) and int(m.group(1)) < len(items) and isinstance(items[int(m.group(1))], dict):
            name = items[int(m.group(1))].get("name")
            if name:
                p = f"playbooks.{m.group(1)} ({name}){m.group(2)}"
        out.append(p)
    return out
