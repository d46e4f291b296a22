"""The report's charts: matplotlib figures rendered to inline SVG text.

Why SVG from matplotlib: the report must open from disk or an e-mail
attachment with no server and no internet, so every chart is vector markup
inside the HTML (no scripts, fonts or images to fetch). Text stays text
(`svg.fonttype: none`), which keeps the files small and searchable; each chart
gets its own hash salt so the ids matplotlib writes (clip paths) never collide
between the many SVGs of one page.

Rendering text is what costs time in matplotlib, so the per-account score
history charts of the drill-down are sparklines without tick labels, drawn by
re-using one figure (`SparklineRenderer`); the scale is shown by the band
background and the numbers next to the chart in HTML.
"""

from __future__ import annotations

import io
import re
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede any pyplot import elsewhere in the process

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

INK = "#2b2f36"
MUTED = "#6b7280"
GRID = "#e5e7eb"
BASE_COLOR = "#9aa7b8"
ADJUSTED_COLOR = "#2f6fd6"
_SVG_START = re.compile(r"<svg\b")
_GROUP_ID = re.compile(r'<g id="[^"]*"')
#: Dropping every metadata key leaves out the RDF block (bytes x hundreds of charts).
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_RC = {"svg.fonttype": "none", "font.size": 9, "axes.edgecolor": GRID, "axes.labelcolor": INK,
       "xtick.color": MUTED, "ytick.color": MUTED, "font.family": "DejaVu Sans"}


def money(value: float) -> str:
    """$1.2M / $350K / $900, the way revenue people read it."""
    if value is None or not np.isfinite(value):
        return "-"
    sign = "-" if value < 0 else ""
    v = abs(float(value))
    if v >= 1e9:
        return f"{sign}${v / 1e9:.1f}B"
    if v >= 1e6:
        return f"{sign}${v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{sign}${v / 1e3:.0f}K"
    return f"{sign}${v:.0f}"


def to_svg(fig: Figure, key: str) -> str:
    """The figure as an `<svg>` element (no XML prolog), ids salted with `key` so they are unique in the page."""
    buf = io.StringIO()
    params = matplotlib.rcParams
    saved = params["svg.fonttype"], params["svg.hashsalt"]
    # plain assignment, not rc_context: copying every rcParam costs more than drawing a sparkline
    params["svg.fonttype"], params["svg.hashsalt"] = "none", f"hs-{key}"
    try:
        fig.savefig(buf, format="svg", metadata=_NO_METADATA, transparent=True)
    finally:
        params["svg.fonttype"], params["svg.hashsalt"] = saved
    text = buf.getvalue()
    match = _SVG_START.search(text)
    text = text[match.start():] if match else text
    # group ids (figure_1, axes_1, ...) repeat in every chart and nothing refers to them
    return _GROUP_ID.sub("<g", text)


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", color=MUTED, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def bands_chart(summary: pd.DataFrame) -> str:
    """Accounts and ARR per band, side by side, worst band on top."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.2, 2.2 + 0.18 * len(summary)))
        ax_n, ax_arr = fig.subplots(1, 2, sharey=True)
        rows = summary.iloc[::-1]
        y = np.arange(len(rows))
        ax_n.barh(y, rows["accounts"], color=rows["color"])
        ax_arr.barh(y, rows["arr"], color=rows["color"])
        ax_n.set_yticks(y, rows["band"])
        ax_n.set_title("Accounts", loc="left", color=INK)
        ax_arr.set_title("ARR", loc="left", color=INK)
        ax_arr.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: money(v)))
        ax_arr.xaxis.set_major_locator(MaxNLocator(4))
        ax_n.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        for ax in (ax_n, ax_arr):
            _style(ax)
            ax.grid(False, axis="y")
        for yi, n, a in zip(y, rows["accounts"], rows["arr"]):
            ax_n.annotate(f"{int(n)}", (n, yi), xytext=(3, 0), textcoords="offset points", va="center", color=INK, fontsize=8)
            ax_arr.annotate(money(a), (a, yi), xytext=(3, 0), textcoords="offset points", va="center", color=INK, fontsize=8)
        ax_n.margins(x=0.18)
        ax_arr.margins(x=0.25)
        fig.tight_layout()
        return to_svg(fig, "bands")


def distribution_chart(scores: pd.Series, bands: pd.Series, band_colors: Sequence[tuple[str, str]]) -> str:
    """Histogram of scores in 5-point bins, stacked by the band each account is actually in.

    Stacked by the account's band rather than coloured by score range: segment,
    lifecycle and CSM overrides put accounts with the same score in different bands.
    """
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.2, 2.6))
        ax = fig.subplots()
        values = pd.to_numeric(scores, errors="coerce")
        edges = np.arange(0, 105, 5, dtype=float)
        bottom = np.zeros(len(edges) - 1)
        labels = bands.astype("string").fillna("").to_numpy(dtype=object)
        known = values.notna().to_numpy()
        for name, color in band_colors:
            mask = known & (labels == name)
            if not mask.any():
                continue
            counts, _ = np.histogram(np.clip(values.to_numpy()[mask], 0, 100), bins=edges)
            # one filled step outline per band (not one rectangle per bin): a fraction of the SVG and the time
            ax.stairs(bottom + counts, edges, baseline=bottom.copy(), fill=True, color=color, label=name,
                      edgecolor="white", linewidth=0.6)
            bottom = bottom + counts
        ax.set_xlim(0, 100)
        ax.set_xlabel("Health score")
        ax.set_ylabel("Accounts")
        ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
        _style(ax)
        ax.grid(False, axis="x")
        if known.any():
            ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            _empty(ax, "No scored accounts")
        fig.tight_layout()
        return to_svg(fig, "distribution")


def trend_chart(trend: pd.DataFrame, bands: Sequence[tuple[str, str]]) -> str:
    """Mean score per run (line) over the share of accounts in each band (stacked area)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.2, 3.6))
        ax_mean, ax_bands = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
        n = len(trend)
        x = np.arange(n)
        if n:
            ax_mean.plot(x, trend["mean_score"], color=INK, linewidth=1.6, marker="o" if n <= 40 else None, markersize=3)
            total = trend["accounts"].to_numpy(dtype=float)
            total[total == 0] = 1
            shares = [trend[name].to_numpy(dtype=float) / total * 100 if name in trend.columns else np.zeros(n) for name, _c in bands]
            if n == 1:  # a single run: show it as a stacked bar, an area needs two points
                bottom = 0.0
                for (name, color), share in zip(bands, shares):
                    ax_bands.bar(x, share, bottom=bottom, color=color, width=0.5, label=name)
                    bottom += share
            else:
                ax_bands.stackplot(x, *shares, colors=[c for _n, c in bands], labels=[n_ for n_, _c in bands], alpha=0.9)
            ticks = np.unique(np.linspace(0, n - 1, min(n, 6)).round().astype(int))
            labels = pd.to_datetime(trend["scored_at"]).dt.strftime("%b %d\n%H:%M").to_numpy()
            ax_bands.set_xticks(ticks, labels[ticks])
            ax_bands.set_xlim(-0.5, n - 0.5)
            ax_bands.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        else:
            _empty(ax_mean, "No runs yet")
        ax_mean.set_ylabel("Mean score")
        ax_mean.yaxis.set_major_locator(MaxNLocator(4))
        if n:  # at least a 20-point window, so run-to-run noise does not look like a collapse
            mid = float(np.nanmean(trend["mean_score"])) if trend["mean_score"].notna().any() else 50.0
            lo, hi = np.nanmin(trend["mean_score"]), np.nanmax(trend["mean_score"])
            half = max((hi - lo) / 2 + 2, 10) if np.isfinite(lo) else 10
            ax_mean.set_ylim(max(0, mid - half), min(100, mid + half))
        ax_bands.set_ylabel("% of accounts")
        ax_bands.set_ylim(0, 100)
        for ax in (ax_mean, ax_bands):
            _style(ax)
        fig.tight_layout()
        return to_svg(fig, "trend")


def forecast_chart(forecast: pd.DataFrame) -> str:
    """Expected revenue per close quarter: base probability vs health-adjusted probability."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.2, 2.8))
        ax = fig.subplots()
        n = len(forecast)
        if n:
            x = np.arange(n)
            ax.bar(x - 0.2, forecast["base_expected"], width=0.4, color=BASE_COLOR, label="Before (CRM probability)")
            adjusted = pd.to_numeric(forecast["adjusted_expected"], errors="coerce").fillna(0.0)
            ax.bar(x + 0.2, adjusted, width=0.4, color=ADJUSTED_COLOR, label="After health adjustment")
            ax.set_xticks(x, forecast["quarter"].astype(str))
            ax.legend(frameon=False, fontsize=8, loc="upper right")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: money(v)))
            ax.yaxis.set_major_locator(MaxNLocator(5))
        else:
            _empty(ax, "No open opportunities")
        _style(ax)
        ax.grid(False, axis="x")
        fig.tight_layout()
        return to_svg(fig, "forecast")


class SparklineRenderer:
    """Score-history sparklines for the drill-down, drawn on one re-used figure (fast: no text is laid out)."""

    def __init__(self, bands: Sequence[tuple[str, float, float, str]], width_in: float = 3.6, height_in: float = 0.9):
        with matplotlib.rc_context(_RC):
            self.fig = Figure(figsize=(width_in, height_in))
            self.ax = self.fig.add_axes((0.01, 0.06, 0.98, 0.88))
            # one collection for the band backgrounds and one line (last point marked): the fewer artists, the faster
            spans = [[(0, lo), (1, lo), (1, hi + (1 if hi < 100 else 0)), (0, hi + (1 if hi < 100 else 0))] for _n, lo, hi, _c in bands]
            self.ax.add_collection(PolyCollection(spans, facecolors=[c for *_r, c in bands], alpha=0.13, linewidths=0,
                                                  transform=self.ax.get_yaxis_transform()))
            (self.line,) = self.ax.plot([], [], color=INK, linewidth=1.6, solid_capstyle="round", marker="o",
                                        markersize=3.5, markevery=[-1])
            self.ax.set_ylim(0, 100)
            self.ax.set_axis_off()

    def render(self, scores: Sequence[float], key: str) -> str:
        values = np.asarray(pd.to_numeric(pd.Series(scores), errors="coerce"), dtype=float)
        x = np.arange(len(values), dtype=float)
        if len(values) == 1:  # one run: a short flat line so there is something to read
            x, values = np.array([0.0, 1.0]), np.repeat(values, 2)
        self.line.set_data(x, values)
        self.ax.set_xlim(-0.3, max(x[-1], 1.0) + 0.3)
        return to_svg(self.fig, key)
