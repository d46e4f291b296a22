"""The scoring and forecast model as configuration (pydantic v2).

Everything a RevOps admin tunes lives here: metrics with their scoring rules,
flat weights (dimension scores are the weight-normalised mean of their
metrics, so the composite is the same either way), bands, segment and
lifecycle threshold overrides, the CSM sentiment override and the forecast
adjustment. Defaults come from the seeds and are encoded in
`config/default.yaml` (seed 003_cec208348d92c0f6.txt for the measure table,
001_9b7515619717186a.txt for segments and lifecycle, 000_caaf87bd3b38802c.txt
for the forecast).

Band semantics: bands are listed from worst to best. A score `s` belongs to
the band whose `min <= s < next band's min` (the last band runs to 100
inclusive). `max` documents the range as people write it (Red 0-40, Yellow
41-70, Green 71-100): with one-decimal scores, 40.9 is Red and 41.0 Yellow.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEIGHT_TOLERANCE = 1e-6


class Strict(BaseModel):
    """Unknown keys are configuration errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Step(Strict):
    min: float = Field(description="value >= min earns `points`")
    points: float = Field(ge=0, le=100)


class StepsRule(Strict):
    """value >= threshold -> points; thresholds listed in descending order; below all -> `else_points`."""

    type: Literal["steps"]
    column: str
    steps: list[Step] = Field(min_length=1)
    else_points: float = Field(0, ge=0, le=100)

    @field_validator("steps")
    @classmethod
    def _descending(cls, steps: list[Step]) -> list[Step]:
        mins = [s.min for s in steps]
        if any(b >= a for a, b in zip(mins, mins[1:])):
            raise ValueError(f"steps must be listed with strictly descending `min` (got {mins})")
        return steps


class LinearRule(Strict):
    """Linear from `zero_at` (0 points) to `full_at` (100 points), clipped; either direction."""

    type: Literal["linear"]
    column: str
    zero_at: float
    full_at: float

    @model_validator(mode="after")
    def _distinct(self):
        if self.zero_at == self.full_at:
            raise ValueError("zero_at and full_at must differ")
        return self


class RatioRule(Strict):
    """numerator / denominator, then linear from `zero_at` to `full_at` (clipped)."""

    type: Literal["ratio"]
    numerator: str
    denominator: str
    zero_at: float = 0.0
    full_at: float = 1.0

    @model_validator(mode="after")
    def _distinct(self):
        if self.zero_at == self.full_at:
            raise ValueError("zero_at and full_at must differ")
        return self


class CategoryRule(Strict):
    """value -> points; a value not listed makes the metric absent (never zero)."""

    type: Literal["category"]
    column: str
    points: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(min_length=1)


class BooleanRule(Strict):
    type: Literal["boolean"]
    column: str
    true_points: float = Field(100, ge=0, le=100)
    false_points: float = Field(0, ge=0, le=100)


class IdentityRule(Strict):
    """The column is already a 0-100 score."""

    type: Literal["identity"]
    column: str


class TrendRule(Strict):
    """Short window vs long window rate: declining / stable / increasing -> points.

    `short` and `long` are columns holding the rate per day (or any comparable
    rate) over each window; the change is `short / long - 1` and anything
    within +-`tolerance` is stable. When both are zero the trend is stable.
    """

    type: Literal["trend"]
    short: str
    long: str
    tolerance: float = Field(0.2, ge=0)
    points: dict[Literal["declining", "stable", "increasing"], Annotated[float, Field(ge=0, le=100)]]

    @field_validator("points")
    @classmethod
    def _all_three(cls, points):
        missing = {"declining", "stable", "increasing"} - set(points)
        if missing:
            raise ValueError(f"points needs declining, stable and increasing (missing {sorted(missing)})")
        return points


Rule = Annotated[
    Union[StepsRule, LinearRule, RatioRule, CategoryRule, BooleanRule, IdentityRule, TrendRule],
    Field(discriminator="type"),
]


class Metric(Strict):
    name: str
    label: str = Field(description="short text used in drivers, e.g. 'Logins'")
    dimension: str
    weight: float = Field(ge=0, le=1)
    rule: Rule
    unit: str = ""
    target: float | None = Field(None, description="the value a healthy account reaches, shown in drivers")
    driver: str | None = Field(
        None, description="driver text with a {value} placeholder, e.g. '{value} escalations in 90 days'"
    )


class Band(Strict):
    name: str
    min: float = Field(ge=0, le=100)
    max: float = Field(ge=0, le=100)
    color: str = "#888888"
    at_risk: bool = Field(False, description="counted as flagged at-risk in backtests and playbooks")


def check_bands(bands: list[Band], where: str = "bands") -> None:
    """Ordered worst to best, covering 0-100 with no gap and no overlap."""
    if not bands:
        raise ValueError(f"{where}: at least one band is required")
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: band names must be unique (got {names})")
    if bands[0].min != 0:
        raise ValueError(f"{where}: the first band ({bands[0].name}) must start at 0, not {bands[0].min:g}")
    if bands[-1].max != 100:
        raise ValueError(f"{where}: the last band ({bands[-1].name}) must end at 100, not {bands[-1].max:g}")
    for b in bands:
        if b.max < b.min:
            raise ValueError(f"{where}.{b.name}: max {b.max:g} is below min {b.min:g}")
    for prev, nxt in zip(bands, bands[1:]):
        if nxt.min > prev.max + 1:
            raise ValueError(
                f"{where}: gap between {prev.name} (max {prev.max:g}) and {nxt.name} (min {nxt.min:g})"
            )
        if nxt.min < prev.max or nxt.min <= prev.min:
            raise ValueError(
                f"{where}: {nxt.name} (min {nxt.min:g}) overlaps {prev.name} (max {prev.max:g})"
            )


class ThresholdOverride(Strict):
    """New `min` per band name (the previous band's max follows). Used by segments and lifecycle."""

    thresholds: dict[str, float] = Field(default_factory=dict)


class SegmentModel(ThresholdOverride):
    """A segment may override metric weights (result must still sum to 1) and band minimums."""

    weights: dict[str, float] = Field(default_factory=dict)


class LifecycleStage(ThresholdOverride):
    name: str
    max_tenure_days: int | None = Field(None, description="the stage lasts until this tenure; null = open-ended")


class RenewalWindow(ThresholdOverride):
    days: int = Field(60, ge=0)


class Lifecycle(Strict):
    """Stages by tenure (customer_since), plus the renewal window (renewal_date), seed 001.

    Threshold overrides apply in this order, later winning per band:
    base bands -> segment -> lifecycle stage -> renewal window.
    """

    stages: list[LifecycleStage] = Field(default_factory=list)
    renewal_window: RenewalWindow | None = None


class CsmOverride(Strict):
    """CSM sentiment shifts the band by at most `max_tiers`, with a recorded reason (seed 003)."""

    enabled: bool = True
    column: str = "csm_sentiment"
    shifts: dict[str, int] = Field(default_factory=lambda: {"red": -1, "yellow": 0, "green": 1})
    max_tiers: int = Field(1, ge=0, le=1)


class RegressionTerm(Strict):
    """One input of a `regression` fitted model: a metric's value, transformed, standardised, weighted.

    x = (clip(transform(value), clip[0], clip[1]) - center) / scale; an absent value counts as `center`
    (x = 0: no news either way). `value: raw` reads what the metric's rule reads (its column; a ratio rule's
    numerator / denominator; a boolean as 0/1); `value: score` the metric's 0-100 score (category and trend
    rules, whose raw values are not numbers).
    """

    metric: str
    value: Literal["raw", "score"] = "raw"
    transform: Literal["none", "log1p"] = "none"
    clip: list[float] = Field(min_length=2, max_length=2, description="[low, high] after the transform")
    center: float = 0.0
    scale: float = Field(1.0, gt=0)
    coef: float = Field(description="log-odds of churn per unit of x")


class FittedModel(Strict):
    """Score -> churn probability map learned by `healthsync calibrate` (health = 100 - 100 x p).

    kinds: `platt` (logistic on the composite score), `isotonic` (knots x -> y), `logistic` (on the
    metric scores, one `coef` per entry of `metrics`), `regression` (`calibrate --method fitted`:
    logistic on the metrics' raw values, one entry of `terms` each).
    """

    kind: Literal["platt", "isotonic", "logistic", "regression"] = "platt"
    coef: list[float] = Field(default_factory=list)
    intercept: float = 0.0
    metrics: list[str] = Field(default_factory=list)
    x: list[float] = Field(default_factory=list, description="isotonic knots (score)")
    y: list[float] = Field(default_factory=list, description="isotonic knots (churn probability)")
    terms: list[RegressionTerm] = Field(default_factory=list, description="regression inputs")


class ModelConfig(Strict):
    method: Literal["weighted", "points", "percentile", "traffic_light", "fitted"] = "weighted"
    metrics: list[Metric] = Field(min_length=1)
    bands: list[Band]
    segments: dict[str, SegmentModel] = Field(default_factory=dict)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    csm_override: CsmOverride = Field(default_factory=CsmOverride)
    confidence_floor: float = Field(0.5, ge=0, le=1, description="below this share of weight present: 'Insufficient data'")
    insufficient_band: str = "Insufficient data"
    trend_stable_within: float = Field(5.0, ge=0, description="momentum is stable within +- this many points")
    percentile_cohort: str = Field("segment", description="column that defines the cohort for the percentile method")
    traffic_light: dict[str, float] = Field(
        default_factory=dict, description="rule-based method: metric name -> minimum metric score for green"
    )
    traffic_light_red: dict[str, float] = Field(
        default_factory=dict, description="rule-based method: metric name -> a metric score below this is red"
    )
    fitted: FittedModel | None = None

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metrics: duplicate metric names {dup}")
        total = sum(m.weight for m in self.metrics)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"metrics: weights must sum to 1 (they sum to {total:.6g})")
        check_bands(self.bands, "bands")
        for key in ("traffic_light", "traffic_light_red"):
            unknown = set(getattr(self, key)) - set(names)
            if unknown:
                raise ValueError(f"{key}: unknown metrics {sorted(unknown)}")
        if self.fitted is not None:
            unknown = ({t.metric for t in self.fitted.terms} | set(self.fitted.metrics)) - set(names)
            if unknown:
                raise ValueError(f"fitted: unknown metrics {sorted(unknown)} (the model's metrics are {names})")
            if self.fitted.kind == "regression" and not self.fitted.terms:
                raise ValueError("fitted.terms: a regression model needs at least one term")
        band_names = {b.name for b in self.bands}
        for seg_name, seg in self.segments.items():
            unknown = set(seg.weights) - set(names)
            if unknown:
                raise ValueError(f"segments.{seg_name}.weights: unknown metrics {sorted(unknown)}")
            weights = {m.name: seg.weights.get(m.name, m.weight) for m in self.metrics}
            total = sum(weights.values())
            if seg.weights and abs(total - 1.0) > WEIGHT_TOLERANCE:
                raise ValueError(f"segments.{seg_name}.weights: weights must sum to 1 (they sum to {total:.6g})")
            self._check_override(seg.thresholds, band_names, f"segments.{seg_name}.thresholds")
        for stage in self.lifecycle.stages:
            self._check_override(stage.thresholds, band_names, f"lifecycle.stages.{stage.name}.thresholds")
        if self.lifecycle.renewal_window:
            self._check_override(
                self.lifecycle.renewal_window.thresholds, band_names, "lifecycle.renewal_window.thresholds"
            )
        return self

    def _check_override(self, thresholds: dict[str, float], band_names: set[str], where: str) -> None:
        unknown = set(thresholds) - band_names
        if unknown:
            raise ValueError(f"{where}: unknown bands {sorted(unknown)} (bands are {sorted(band_names)})")
        if thresholds:
            check_bands(apply_thresholds(self.bands, thresholds), where)

    def weights(self, segment: str | None = None) -> dict[str, float]:
        seg = self.segments.get(segment or "")
        return {m.name: (seg.weights.get(m.name, m.weight) if seg else m.weight) for m in self.metrics}

    @property
    def dimensions(self) -> list[str]:
        seen: list[str] = []
        for m in self.metrics:
            if m.dimension not in seen:
                seen.append(m.dimension)
        return seen


def apply_thresholds(bands: list[Band], thresholds: dict[str, float]) -> list[Band]:
    """Bands with new minimums; each previous band's max becomes the new min - 1."""
    out = [b.model_copy() for b in bands]
    for i, b in enumerate(out):
        if b.name in thresholds:
            b.min = thresholds[b.name]
            if i > 0:
                out[i - 1].max = max(out[i - 1].min, thresholds[b.name] - 1)
    return out


class BandMultiplier(Strict):
    """Forecast multiplier by health band range (seed 000 table)."""

    name: str
    min: float = Field(ge=0, le=100)
    max: float = Field(ge=0, le=100)
    multiplier: float = Field(ge=0)


class FittedForecast(Strict):
    """Chance of winning learned from the customer's own deal outcomes (`healthsync calibrate`).

    logit(P(win)) = base_coef x logit(base probability) + health shift + trend_coef x trend, where the
    health shift is piecewise linear in the account's score through the knots `health_x` -> `health_y`
    (log-odds; flat beyond the end knots) and trend = clip(delta_30d, -30, 30) / 10. No change at all is
    base_coef 1, every health_y 0, trend_coef 0: the fit is shrunk towards it where evidence is thin.
    """

    base_coef: float = 1.0
    health_x: list[float] = Field(min_length=2, description="score knots, strictly increasing")
    health_y: list[float] = Field(min_length=2, description="log-odds shift at each knot")
    trend_coef: float = 0.0
    opportunities: int = Field(0, ge=0, description="training opportunities the fit saw (documentation)")

    @model_validator(mode="after")
    def _knots(self):
        if len(self.health_x) != len(self.health_y):
            raise ValueError("health_x and health_y must have the same length")
        if any(b <= a for a, b in zip(self.health_x, self.health_x[1:])):
            raise ValueError(f"health_x must be strictly increasing (got {self.health_x})")
        return self


class ForecastConfig(Strict):
    """Opportunity probability adjustment by account health (seed 000_caaf87bd3b38802c.txt).

    method `delta`: adjusted = base x (1 + delta/100 x sensitivity), delta = the account's
    score change over `delta_window_days` (default 30).
    method `band_multipliers`: adjusted = base x the multiplier of the account's score range,
    times the trend multiplier (improving / declining by `trend_points`).
    With `renormalise` (the default for both), the factors are then scaled by one number per call
    so the open pipeline's expected ARR equals its unadjusted total: uncalibrated health moves
    probability between deals and never inflates or deflates the book. `renormalise: false`
    applies the seed's multipliers as they stand.
    method `fitted`: the map `fitted` learned by `healthsync calibrate` from won/lost deals
    (never renormalised: the customer's own outcomes may move the book).
    Every method: clipped to [0, 1] and to +- `max_swing` relative to base, once per opportunity.
    """

    enabled: bool = True
    method: Literal["band_multipliers", "delta", "fitted"] = "band_multipliers"
    renormalise: bool = True
    fitted: FittedForecast | None = None
    sensitivity: float = Field(0.8, ge=0)
    delta_window_days: int = Field(30, ge=1)
    max_swing: float = Field(0.3, ge=0, le=1)
    band_multipliers: list[BandMultiplier] = Field(default_factory=list)
    trend_points: float = Field(10.0, ge=0)
    improving_multiplier: float = Field(1.2, ge=0)
    declining_multiplier: float = Field(0.8, ge=0)
    expansion_multiplier: float = Field(1.5, ge=0)
    churn_risk_multiplier: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _fitted_present(self):
        if self.method == "fitted" and self.fitted is None:
            raise ValueError("fitted: method 'fitted' needs the fitted map that `healthsync calibrate` writes")
        return self
