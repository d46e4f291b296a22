"""Which canonical frames and columns a model reads, known without loading pandas.

`healthsync score --input` asks this before anything heavy is imported, so the files it
names can be decoded while the engine's libraries load (sync/offline.py). The feature
names below are the ones engine/features.py computes; `rule_columns` is the one list of
what each rule type reads.
"""

from __future__ import annotations

from healthsync.config.model import ModelConfig, RatioRule, TrendRule

OPPORTUNITY_FEATURES = ("open_opportunities", "open_pipeline_amount")
TICKET_FEATURES = ("tickets_30d", "tickets_90d", "tickets_rate_30d", "tickets_rate_90d", "escalations_90d", "open_p1_90d")
#: computed feature -> the accounts columns it is computed from
_ACCOUNT_DERIVED = {
    "license_utilization": ("active_users_30d", "seats_purchased"),
    "feature_adoption": ("features_used", "features_available"),
    "tenure_days": ("customer_since",),
    "days_to_renewal": ("renewal_date",),
}


def rule_columns(rule) -> list[str]:
    """The feature columns a rule reads."""
    if isinstance(rule, RatioRule):
        return [rule.numerator, rule.denominator]
    if isinstance(rule, TrendRule):
        return [rule.short, rule.long]
    return [rule.column]


def model_inputs(model: ModelConfig) -> dict[str, set[str]]:
    """The canonical frames, and their columns, that scoring with `model` reads.

    Frames the model does not need are left out (no default metric reads opportunities), so
    `healthsync score --input` reads neither their files nor their unused columns. Accounts
    always include the id, name, segment and the dates lifecycle stages and the renewal
    window come from. Keep in step with `engine.features.build_features`, which reads them
    (tests/input/test_input_projection.py checks that projected and full reads score alike).
    """
    reads = {c for m in model.metrics for c in rule_columns(m.rule)}
    accounts = {"account_id", "name", "segment", "customer_since", "renewal_date"} | reads
    for feature, sources in _ACCOUNT_DERIVED.items():
        if feature in reads:
            accounts |= set(sources)
    if model.csm_override.enabled:
        accounts.add(model.csm_override.column)
    if model.method == "percentile":
        accounts.add(model.percentile_cohort)
    out = {"accounts": accounts - set(TICKET_FEATURES) - set(OPPORTUNITY_FEATURES)}
    if reads & set(TICKET_FEATURES):
        tickets = {"ticket_id", "account_id", "created_at"}
        if "escalations_90d" in reads:
            tickets.add("escalated")
        if "open_p1_90d" in reads:
            tickets |= {"priority", "status", "closed_at"}
        out["tickets"] = tickets
    if reads & set(OPPORTUNITY_FEATURES):
        out["opportunities"] = {"opportunity_id", "account_id", "is_closed", "amount"}
    return out
