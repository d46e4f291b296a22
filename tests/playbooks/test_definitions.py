"""Loading playbook definitions: the seeds' defaults and clear errors naming playbook and key."""

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from healthsync.config.settings import ConfigError, load_settings
from healthsync.playbooks.definitions import PACKAGED_DEFINITIONS, load_playbooks
from healthsync.playbooks.render import SAMPLE_ROW, TemplateRenderer, task_context


def settings_with(tmp_path: Path, definitions: dict | None = None, enabled: list[str] | None = None, templates: dict | None = None):
    user: dict = {"playbooks": {}}
    if definitions is not None:
        path = tmp_path / "playbooks.yaml"
        path.write_text(yaml.safe_dump(definitions))
        user["playbooks"]["definitions"] = str(path)
    if enabled is not None:
        user["playbooks"]["enabled"] = enabled
    for name, text in (templates or {}).items():
        (tmp_path / "templates").mkdir(exist_ok=True)
        (tmp_path / "templates" / name).write_text(text)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(user))
    return load_settings(cfg, environ={})


def defaults() -> dict:
    return yaml.safe_load(PACKAGED_DEFINITIONS.read_text())


def test_default_playbooks_carry_the_seed_slas(tmp_path):
    pbs = {p.name: p for p in load_playbooks(load_settings(environ={})).playbooks}
    assert set(pbs) == {"at_risk_intervention", "rapid_decline", "expansion_opportunity", "renewal_risk"}
    assert pbs["at_risk_intervention"].sla_hours == 24 and pbs["at_risk_intervention"].priority == "high"
    assert pbs["expansion_opportunity"].sla_hours == 168  # one week (seed 000)
    assert pbs["at_risk_intervention"].escalate_to == "vp"
    assert pbs["expansion_opportunity"].escalate_to == "owner"


def test_enabled_selects_playbooks(tmp_path):
    s = settings_with(tmp_path, enabled=["rapid_decline"])
    assert [p.name for p in load_playbooks(s).playbooks] == ["rapid_decline"]


def test_unknown_enabled_playbook_is_a_config_error(tmp_path):
    s = settings_with(tmp_path, enabled=["at_risk", "rapid_decline"])
    with pytest.raises(ConfigError) as e:
        load_playbooks(s)
    assert "playbooks.enabled: unknown playbook(s) ['at_risk']" in str(e.value)


def test_bad_condition_and_sla_name_the_playbook_and_key(tmp_path):
    d = defaults()
    d["playbooks"][3]["condition"] = {"all": [{"days_to_renewal_lte": 60}, {"scor_lt": 70}]}
    d["playbooks"][1]["sla_hours"] = -1
    s = settings_with(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_playbooks(s)
    assert "playbooks.1 (rapid_decline).sla_hours: Input should be greater than 0" in e.value.problems[0]
    d["playbooks"][1]["sla_hours"] = 48
    s = settings_with(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_playbooks(s)
    assert e.value.problems == ["playbooks.renewal_risk.condition.all.1.scor_lt: unknown column 'scor' (known: "
                                + e.value.problems[0].split("(known: ")[1]]


def test_unknown_key_and_unknown_ladder_level_are_rejected(tmp_path):
    d = defaults()
    d["playbooks"][0]["sla"] = 24
    with pytest.raises(ConfigError) as e:
        load_playbooks(settings_with(tmp_path, d))
    assert any("playbooks.0 (at_risk_intervention).sla: unknown key" in p for p in e.value.problems)
    d = defaults()
    d["playbooks"][0]["escalate_to"] = "ceo"
    with pytest.raises(ConfigError) as e:
        load_playbooks(settings_with(tmp_path, d))
    assert e.value.problems == ["playbooks.at_risk_intervention.escalate_to: 'ceo' is not a level of escalation.ladder (owner, manager, vp)"]


def test_template_with_undefined_variable_fails_at_load_time(tmp_path):
    d = defaults()
    d["playbooks"][0]["templates"]["subject"] = "custom.j2"
    s = settings_with(tmp_path, d, templates={"custom.j2": "Call {{ acount_name }}"})
    with pytest.raises(ConfigError) as e:
        load_playbooks(s)
    assert e.value.problems[0].startswith("playbooks.at_risk_intervention.templates.subject: template custom.j2: UndefinedError")
    assert "acount_name" in e.value.problems[0]


def test_user_templates_directory_overrides_the_packaged_one(tmp_path):
    d = defaults()
    s = settings_with(tmp_path, d, templates={"at_risk_intervention.subject.j2": "Save {{ account_name }} now"})
    ps = load_playbooks(s)
    ctx = task_context(SAMPLE_ROW, playbook_title="t", sla_hours=24, due_at=datetime(2027, 1, 1), task_key="k")
    assert ps.renderer.render("at_risk_intervention.subject.j2", ctx) == "Save Sample Co now"


def test_crm_text_is_rendered_as_a_value_never_as_a_template():
    row = dict(SAMPLE_ROW, name="{{ 7*7 }}{% for x in range(3) %}x{% endfor %}", drivers="{{ ''.__class__ }}")
    ctx = task_context(row, playbook_title="t", sla_hours=24, due_at=datetime(2027, 1, 1), task_key="k")
    r = TemplateRenderer()
    assert r.render("at_risk_intervention.subject.j2", ctx) == "At-risk: {{ 7*7 }}{% for x in range(3) %}x{% endfor %} health 38 (Red)"
    assert "- {{ ''.__class__ }}" in r.render("at_risk_intervention.description.j2", ctx)


def test_sandbox_blocks_unsafe_attribute_access_in_templates(tmp_path):
    d = defaults()
    d["playbooks"][0]["templates"]["subject"] = "evil.j2"
    s = settings_with(tmp_path, d, templates={"evil.j2": "{{ account_name.__class__.__mro__[1].__subclasses__() }}"})
    with pytest.raises(ConfigError) as e:
        load_playbooks(s)
    assert "SecurityError" in e.value.problems[0]


def test_band_overrides_are_validated_against_bands_and_ladder(tmp_path):
    d = defaults()
    d["playbooks"][0]["band_overrides"] = {"Yelow": {"sla_hours": 168}, "Red": {"escalate_to": "ceo"}}
    with pytest.raises(ConfigError) as e:
        load_playbooks(settings_with(tmp_path, d))
    assert sorted(e.value.problems) == [
        "playbooks.at_risk_intervention.band_overrides.Red.escalate_to: 'ceo' is not a level of escalation.ladder (owner, manager, vp)",
        "playbooks.at_risk_intervention.band_overrides.Yelow: unknown band (model.bands: Red, Yellow, Green)",
    ]


def test_at_risk_sla_and_ladder_by_band_follow_seed_003():
    pb = {p.name: p for p in load_playbooks(load_settings(environ={})).playbooks}["at_risk_intervention"]
    assert (pb.sla_for("Red"), pb.top_for("Red")) == (24, "vp")
    assert (pb.sla_for("Yellow"), pb.top_for("Yellow")) == (168, "manager")  # "Yellow: within 1 week"
    assert pb.sla_for(None) == 24
