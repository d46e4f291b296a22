"""The report's charts: Vega-Lite specs built with Altair, compiled to Vega, drawn by Vega in the page.

Why Vega: the charts must show values on hover and redraw when a filter
changes, in a file that opens from disk with no network. The specs here name
their data sets (`alt.Data(name=...)`) and hold no numbers: the page's script
computes each data set from the filtered accounts and hands it to the chart
(`view.data(name, rows)`). Vega-Lite is compiled to Vega once per process by
vl-convert (`compiled_specs`), and the JavaScript that draws them (vega-embed
with Vega and Vega-Lite, `javascript_bundle`) comes from the same pinned
vl-convert package and is inlined into the page.

The customer-facing page has no script: its few charts are rendered to inline
SVG here (`svg`), with their data in the spec.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Sequence

import altair as alt

INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
BASE_COLOR = "#9aa7b8"
ADJUSTED_COLOR = "#2f6fd6"
RISK_COLOR = "#c0392b"
UP_COLOR = "#2e7d4f"
DOWN_COLOR = "#c0392b"
FONT = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
WIDTH = 520

#: the series of the renewal forecast chart, in legend order, with their colours
RENEWAL_SERIES = (("Renewal ARR", BASE_COLOR), ("Health-adjusted", ADJUSTED_COLOR), ("At risk", RISK_COLOR))
PIPELINE_SERIES = (("Before (CRM probability)", BASE_COLOR), ("After health adjustment", ADJUSTED_COLOR))


def _config(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return (
        chart.configure(font=FONT, background="transparent")
        .configure_view(stroke=None)
        .configure_axis(labelColor=MUTED, titleColor=INK, gridColor=GRID, domainColor=GRID, tickColor=GRID,
                        labelFontSize=11, titleFontSize=11, titleFontWeight="normal")
        .configure_legend(labelColor=INK, titleColor=MUTED, labelFontSize=11, titleFontSize=11)
        .configure_title(color=INK, fontSize=12, anchor="start", fontWeight="normal")
    )


def _band_scale(bands: Sequence[tuple[str, str]]) -> alt.Scale:
    return alt.Scale(domain=[b for b, _ in bands], range=[c for _, c in bands])


def _series_scale(series: Sequence[tuple[str, str]]) -> alt.Scale:
    return alt.Scale(domain=[s for s, _ in series], range=[c for _, c in series])


def bands_chart(bands: Sequence[tuple[str, str]]) -> alt.TopLevelMixin:
    """Accounts and ARR per band, worst band on top. Data `bands`: band, accounts, share, arr, arr_share."""
    base = alt.Chart(alt.Data(name="bands")).encode(
        y=alt.Y("band:N", sort=[b for b, _ in bands], title=None),
        color=alt.Color("band:N", scale=_band_scale(bands), legend=None),
        tooltip=[alt.Tooltip("band:N", title="Band"), alt.Tooltip("accounts:Q", title="Accounts", format=","),
                 alt.Tooltip("share:Q", title="Share of accounts", format=".1%"),
                 alt.Tooltip("arr:Q", title="ARR", format="$,.0f"), alt.Tooltip("arr_share:Q", title="Share of ARR", format=".1%")],
    )
    count = base.mark_bar().encode(x=alt.X("accounts:Q", title="Accounts", axis=alt.Axis(format=",d", tickMinStep=1)))
    arr = base.mark_bar().encode(x=alt.X("arr:Q", title="ARR", axis=alt.Axis(format="$~s")))
    return alt.hconcat(count.properties(width=230), arr.properties(width=230))


def distribution_chart(bands: Sequence[tuple[str, str]]) -> alt.TopLevelMixin:
    """Accounts per 5-point score bin, stacked by band. Data `distribution`: start, end, band, accounts."""
    return alt.Chart(alt.Data(name="distribution")).mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("start:Q", bin="binned", scale=alt.Scale(domain=[0, 100]), title="Health score"),
        x2="end:Q",
        y=alt.Y("sum(accounts):Q", title="Accounts", stack="zero"),
        color=alt.Color("band:N", scale=_band_scale(bands), legend=alt.Legend(orient="right", title=None)),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("start:Q", title="From"), alt.Tooltip("end:Q", title="To (excl.)"),
                 alt.Tooltip("band:N", title="Band"), alt.Tooltip("sum(accounts):Q", title="Accounts", format=",")],
    ).properties(width=WIDTH - 90, height=170)


def portfolio_trend_chart(bands: Sequence[tuple[str, str]]) -> alt.TopLevelMixin:
    """Mean score per day (band changes marked) over the band mix per day.

    Data `trend`: date, mean, accounts, moved_up, moved_down, changes; `mix`: date, band, order, share, accounts.
    """
    tips = [alt.Tooltip("date:T", title="Day", format="%Y-%m-%d"), alt.Tooltip("mean:Q", title="Mean score", format=".1f"),
            alt.Tooltip("accounts:Q", title="Accounts scored", format=","),
            alt.Tooltip("moved_up:Q", title="Moved up a band", format=","),
            alt.Tooltip("moved_down:Q", title="Moved down a band", format=",")]
    x = alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelOverlap=True))
    line = alt.Chart(alt.Data(name="trend")).mark_line(color=INK, strokeWidth=1.6).encode(
        x=x, y=alt.Y("mean:Q", title="Mean score", scale=alt.Scale(zero=False, padding=8)), tooltip=tips)
    points = alt.Chart(alt.Data(name="trend")).mark_circle(color=INK, opacity=0.001, size=60).encode(x=x, y="mean:Q", tooltip=tips)
    changes = alt.Chart(alt.Data(name="trend")).transform_filter("datum.changes > 0").mark_point(
        shape="diamond", filled=True, color="#b7791f").encode(
        x=x, y="mean:Q", size=alt.Size("changes:Q", legend=None, scale=alt.Scale(range=[30, 200])), tooltip=tips)
    mix = alt.Chart(alt.Data(name="mix")).mark_area(opacity=0.9).encode(
        x=x,
        y=alt.Y("share:Q", stack="normalize", title="Band mix", axis=alt.Axis(format="%")),
        color=alt.Color("band:N", scale=_band_scale(bands), legend=alt.Legend(orient="bottom", title=None)),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("date:T", title="Day", format="%Y-%m-%d"), alt.Tooltip("band:N", title="Band"),
                 alt.Tooltip("accounts:Q", title="Accounts", format=","), alt.Tooltip("share:Q", title="Share", format=".1%")],
    )
    top = alt.layer(line, points, changes).properties(width=WIDTH, height=150)
    return alt.vconcat(top, mix.properties(width=WIDTH, height=110))


def group_chart(name: str, title: str, bands: Sequence[tuple[str, str]]) -> alt.TopLevelMixin:
    """Accounts by band per group, and ARR at risk per group. Data `name`: group, band, order, at_risk, accounts, arr."""
    data = alt.Data(name=name)
    y = alt.Y("group:N", title=None, sort=None)
    counts = alt.Chart(data).mark_bar().encode(
        y=y, x=alt.X("sum(accounts):Q", title="Accounts", stack="zero"),
        color=alt.Color("band:N", scale=_band_scale(bands), legend=alt.Legend(orient="bottom", title=None)),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("group:N", title=title), alt.Tooltip("band:N", title="Band"),
                 alt.Tooltip("sum(accounts):Q", title="Accounts", format=","), alt.Tooltip("sum(arr):Q", title="ARR", format="$,.0f")],
    ).properties(width=220)
    risk = alt.Chart(data).transform_filter("datum.at_risk").mark_bar(color=RISK_COLOR).encode(
        y=y, x=alt.X("sum(arr):Q", title="ARR at risk", axis=alt.Axis(format="$~s")),
        tooltip=[alt.Tooltip("group:N", title=title), alt.Tooltip("sum(arr):Q", title="ARR at risk", format="$,.0f"),
                 alt.Tooltip("sum(accounts):Q", title="Accounts at risk", format=",")],
    ).properties(width=160)
    return alt.hconcat(counts, risk)


def movers_chart() -> alt.TopLevelMixin:
    """Improving vs declining accounts per segment (declining drawn left of zero).

    Data `movers`: group, direction ("Improving" / "Declining"), signed, accounts, arr.
    """
    return alt.Chart(alt.Data(name="movers")).mark_bar().encode(
        y=alt.Y("group:N", title=None, sort=None),
        x=alt.X("signed:Q", title="Accounts (declining left, improving right)", axis=alt.Axis(format="~s")),
        color=alt.Color("direction:N", scale=_series_scale((("Improving", UP_COLOR), ("Declining", DOWN_COLOR))),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=[alt.Tooltip("group:N", title="Segment"), alt.Tooltip("direction:N", title="Direction"),
                 alt.Tooltip("accounts:Q", title="Accounts", format=","), alt.Tooltip("arr:Q", title="ARR", format="$,.0f")],
    ).properties(width=WIDTH - 80)


def _grouped_bars(name: str, series: Sequence[tuple[str, str]], value: str, value_title: str) -> alt.TopLevelMixin:
    """Bars per quarter, one per series side by side; the legend sits under the plot, so it never covers a bar."""
    return alt.Chart(alt.Data(name=name)).mark_bar().encode(
        x=alt.X("quarter:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("series:N", sort=[s for s, _ in series]),
        y=alt.Y(f"{value}:Q", title=value_title, axis=alt.Axis(format="$~s")),
        color=alt.Color("series:N", scale=_series_scale(series), legend=alt.Legend(orient="bottom", title=None)),
        tooltip=[alt.Tooltip("quarter:N", title="Quarter"), alt.Tooltip("series:N", title="Series"),
                 alt.Tooltip(f"{value}:Q", title=value_title, format="$,.0f"), alt.Tooltip("accounts:Q", title="Records", format=",")],
    ).properties(width=WIDTH - 60, height=200)


def renewal_chart() -> alt.TopLevelMixin:
    """Renewal ARR per quarter: unadjusted, health-adjusted and at risk. Data `renewals`: quarter, series, arr, accounts."""
    return _grouped_bars("renewals", RENEWAL_SERIES, "arr", "ARR")


def pipeline_chart() -> alt.TopLevelMixin:
    """Open pipeline's expected amount per close quarter, before and after the health adjustment.

    Data `pipeline`: quarter, series, expected, accounts (opportunities).
    """
    return _grouped_bars("pipeline", PIPELINE_SERIES, "expected", "Expected amount")


def account_trend_chart(bands: Sequence[tuple[str, str]]) -> alt.TopLevelMixin:
    """One account's daily score, each point in its band's colour, band changes marked by a rule.

    Data `account`: date, score, band; `changes`: date, score, band, previous.
    """
    x = alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelOverlap=True))
    y = alt.Y("score:Q", title="Score", scale=alt.Scale(domain=[0, 100]))
    tips = [alt.Tooltip("date:T", title="Day", format="%Y-%m-%d"), alt.Tooltip("score:Q", title="Score", format=".1f"),
            alt.Tooltip("band:N", title="Band")]
    line = alt.Chart(alt.Data(name="account")).mark_line(color=INK, strokeWidth=1.4).encode(x=x, y=y)
    dots = alt.Chart(alt.Data(name="account")).mark_circle(size=28, opacity=1).encode(
        x=x, y=y, color=alt.Color("band:N", scale=_band_scale(bands), legend=alt.Legend(orient="bottom", title=None)), tooltip=tips)
    rules = alt.Chart(alt.Data(name="changes")).mark_rule(strokeDash=[3, 3], color=MUTED).encode(
        x=x, tooltip=[alt.Tooltip("date:T", title="Band changed", format="%Y-%m-%d"),
                      alt.Tooltip("previous:N", title="From"), alt.Tooltip("band:N", title="To")])
    return alt.layer(rules, line, dots).properties(width=WIDTH, height=170)


def chart_specs(bands: Sequence[tuple[str, str]]) -> dict[str, alt.TopLevelMixin]:
    """Every chart of the interactive page, by the name the page's script uses."""
    return {
        "bands": bands_chart(bands),
        "distribution": distribution_chart(bands),
        "trend": portfolio_trend_chart(bands),
        "trend-detail": portfolio_trend_chart(bands),
        "segments": group_chart("segments", "Segment", bands),
        "lifecycle": group_chart("lifecycle", "Lifecycle stage", bands),
        "movers": movers_chart(),
        "renewals": renewal_chart(),
        "pipeline": pipeline_chart(),
        "account": account_trend_chart(bands),
    }


@functools.lru_cache(maxsize=8)
def _compiled(bands: tuple[tuple[str, str], ...]) -> str:
    import vl_convert as vlc

    specs = {name: vlc.vegalite_to_vega(_config(chart).to_dict()) for name, chart in chart_specs(bands).items()}
    return json.dumps(specs, separators=(",", ":"))


def compiled_specs(bands: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The Vega specs of `chart_specs`, compiled once per band scheme and process."""
    return json.loads(_compiled(tuple((str(n), str(c)) for n, c in bands)))


@functools.lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """vega-embed with Vega and Vega-Lite as one script (vl-convert's bundle), safe inside a <script> element."""
    import vl_convert as vlc

    return script_safe(vlc.javascript_bundle())


_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


def script_safe(text: str) -> str:
    """Text that cannot close the <script> element holding it (`</script` -> `<\\/script`)."""
    return _SCRIPT_END.sub(r"<\\/\1", text.replace("<!--", "<\\!--"))


def svg(chart: alt.TopLevelMixin) -> str:
    """A chart with inline data as an <svg> element (the customer page: no script)."""
    import vl_convert as vlc

    text = vlc.vegalite_to_svg(_config(chart).to_dict())
    start = text.find("<svg")
    return text[start:] if start >= 0 else text
