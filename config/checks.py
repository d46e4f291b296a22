"""Checks `healthsync config validate` runs beyond the settings schema: what a run would trip on later.

The schema (config/settings.py) already checks crons with APScheduler's own parser,
`state.url` (a URL, a supported database, its driver importable) and the
placeholders of `escalation.crm_record_url`. This adds what needs other parts of
the product: every enabled playbook exists, its templates exist and compile, and
its escalation levels and bands are known (playbooks/definitions.py).
"""

from __future__ import annotations

from healthsync.config.settings import ConfigError, Settings


def deep_problems(settings: Settings) -> list[str]:
    """Every problem a run would find in these settings before sending anything; empty when none."""
    problems: list[str] = []
    if settings.playbooks.enabled:
        from healthsync.playbooks.definitions import load_playbooks

        try:
            load_playbooks(settings)
        except ConfigError as e:
            problems += e.problems
    return problems
