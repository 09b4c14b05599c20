"""The report charts of REPORTS.md section 4, each a pure function of plain values (integer minor
units, dates, labels) returning a `Chart`: a PNG to attach inline by Content-ID and an alt text
that states the figures in a full sentence, so a reader without images loses nothing. Empty data
draws a chart that says so; nothing here raises on a short or flat series. Drawing is CPU work:
callers run these in a thread or process pool (STYLE.md rule 9)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, MaxNLocator

from postroom.reports.canvas import (BLUE, FONT, GREEN, INK, LIGHT_GREY, MUTED, ORANGE, PURPLE, SKY, VERMILLION, YELLOW,
                                     Chart, drawable, new_figure, no_data, render, style_axes, text, title)  # fmt: skip
from postroom.reports.formatting import date_range_label, day_label, delta, money, money_compact, number, percent

__all__ = ["Chart", "DeliveryPoint", "PeriodMovements", "chart_locale", "delivery_health", "movements_waterfall", "mrr_sparkline",
           "product_trend"]  # fmt: skip


@dataclass(frozen=True)
class PeriodMovements:
    """One period's MRR movements in minor units of the reporting currency: gains positive,
    `contraction` and `churn` as positive sizes of a loss, `fx` signed (MRR.md 1.5)."""

    label: str
    new: int
    expansion: int
    reactivation: int
    contraction: int
    churn: int
    fx: int = 0

    @property
    def net(self) -> int:
        return self.new + self.expansion + self.reactivation - self.contraction - self.churn + self.fx


@dataclass(frozen=True)
class DeliveryPoint:
    """One day of the daemon's own mail (REPORTS.md 4.3)."""

    day: dt.date
    sent: int
    delivered: int
    bounced: int
    complained: int


def mrr_sparkline(points: Sequence[tuple[dt.date, int]], currency: str, locale: str) -> Chart:
    """MRR at the end of each period (usually 12 weeks), 600 x 160: the line, the last point
    marked, the first and last values written at the ends."""
    width, height, cid = 600, 160, "mrr-sparkline@postroom"
    figure = new_figure(width, height)
    if not points:
        no_data(figure, "MRR")
        return render(figure, cid, "MRR: no data for this period.", width, height)
    days = [day for day, _ in points]
    values = [value for _, value in points]
    drawn = chart_locale(locale, currency)
    axes = figure.add_subplot()
    style_axes(axes, grid=False)
    x = list(range(len(points)))
    axes.fill_between(x, values, min(values), color=BLUE, alpha=0.10, linewidth=0)
    axes.plot(x, values, color=BLUE, linewidth=1.8, solid_capstyle="round")
    axes.plot(x[-1:], values[-1:], "o", color=BLUE, markersize=5, markeredgecolor="white", markeredgewidth=1)
    axes.annotate(money(values[0], currency, drawn), (x[0], values[0]), xytext=(0, 6), textcoords="offset points",
                  ha="left", va="bottom", **text(color=MUTED))  # fmt: skip
    axes.annotate(money(values[-1], currency, drawn), (x[-1], values[-1]), xytext=(-6, 6),
                  textcoords="offset points", ha="right", va="bottom", **text(fontweight="bold"))  # fmt: skip
    axes.set_xticks([x[0], x[-1]], [day_label(days[0], drawn), day_label(days[-1], drawn)])
    axes.set_yticks([])
    axes.spines["left"].set_visible(False)
    low, high = min(values), max(values)
    pad = (high - low) * 0.35 or max(abs(high) * 0.1, 1)
    axes.set_ylim(low - pad * 0.2, high + pad)
    axes.set_xlim(-0.3, x[-1] + 0.3)
    title(figure, "MRR")
    change = delta(values[-1], values[0], currency=currency, locale=locale)
    alt = (f"MRR over {_span(days, locale)}, from {money(values[0], currency, locale)} to "
           f"{money(values[-1], currency, locale)}, {change.words}; low {money(low, currency, locale)}, "
           f"high {money(high, currency, locale)}.")  # fmt: skip
    return render(figure, cid, alt, width, height)


# (attribute, legend label, colour, hatch); gains stack upwards from zero, losses downwards.
_GAINS = (("new", "New", BLUE, ""), ("expansion", "Expansion", SKY, ""),
          ("reactivation", "Reactivation", GREEN, ""))  # fmt: skip
_LOSSES = (("contraction", "Contraction", ORANGE, "////"), ("churn", "Churn", VERMILLION, "xxxx"))


def movements_waterfall(periods: Sequence[PeriodMovements], currency: str = "USD", locale: str = "en_US") -> Chart:
    """MRR movements per period, ChartMogul style (REPORTS.md 4.2.2): gains stacked above zero,
    contraction and churn below (hatched), FX on the side its sign puts it, net new MRR as a
    marker. One period (the weekly summary) or many (the 12-month chart)."""
    width, height, cid = 600, 300, "mrr-movements@postroom"
    figure = new_figure(width, height)
    heading = "MRR movements"
    if not periods:
        no_data(figure, heading)
        return render(figure, cid, f"{heading}: no data for this period.", width, height)
    drawn = chart_locale(locale, currency)
    axes = figure.add_subplot()
    style_axes(axes)
    x = list(range(len(periods)))
    bar = 0.6 if len(periods) > 1 else 0.35
    up = [0] * len(periods)
    down = [0] * len(periods)
    for attribute, label, colour, hatch in _GAINS:
        sizes = [getattr(period, attribute) for period in periods]
        axes.bar(x, sizes, bar, bottom=up, color=colour, label=label, edgecolor="white", linewidth=0.5)
        up = [a + b for a, b in zip(up, sizes)]
    for attribute, label, colour, hatch in _LOSSES:
        sizes = [-getattr(period, attribute) for period in periods]
        axes.bar(x, sizes, bar, bottom=down, color=colour, label=label, hatch=hatch, edgecolor="white",
                 linewidth=0.5)  # fmt: skip
        down = [a + b for a, b in zip(down, sizes)]
    fx = [period.fx for period in periods]
    if any(fx):
        fx_bottom = [u if f >= 0 else d for u, d, f in zip(up, down, fx)]
        axes.bar(x, fx, bar, bottom=fx_bottom, color=YELLOW, label="FX", hatch="....", edgecolor=MUTED,
                 linewidth=0.5)  # fmt: skip
    net = [period.net for period in periods]
    axes.axhline(0, color=INK, linewidth=0.8)
    axes.plot(x, net, color=INK, linewidth=1.2 if len(periods) > 1 else 0, marker="D", markersize=4.5,
              markerfacecolor="white", markeredgecolor=INK, label="Net new MRR", zorder=5)  # fmt: skip
    if len(periods) == 1:
        # Beside the bar, not on it: dark text on the dark "new" segment would vanish.
        axes.annotate(f"Net new {money(net[0], currency, drawn)}", (bar / 2, net[0]), xytext=(5, 0),
                      textcoords="offset points", va="center", **text(fontweight="bold"))  # fmt: skip
        axes.set_xlim(-0.9, 0.9)
    labels = [period.label for period in periods]
    # Twelve labels of more than about six characters collide at 600 px: slant them.
    slant = sum(len(label) + 2 for label in labels) > 80
    axes.set_xticks(x, labels, rotation=30 if slant else 0, ha="right" if slant else "center",
                    rotation_mode="anchor")  # fmt: skip
    axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: money_compact(int(value), currency, drawn)))
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, prop={"family": FONT, "size": 7.5},
                labelcolor=INK, handlelength=1.4)  # fmt: skip
    title(figure, heading)
    return render(figure, cid, _movements_alt(periods, currency, locale), width, height)


def _movements_alt(periods: Sequence[PeriodMovements], currency: str, locale: str) -> str:
    last = periods[-1]

    def amount(minor: int) -> str:
        return money(minor, currency, locale)

    parts = (f"new {amount(last.new)}, expansion {amount(last.expansion)}, reactivation {amount(last.reactivation)}, "
             f"contraction {amount(-last.contraction)}, churn {amount(-last.churn)}, FX {amount(last.fx)}; "
             f"net new MRR {amount(last.net)}")  # fmt: skip
    if len(periods) == 1:
        return f"MRR movements for {last.label}: {parts}."
    total = sum(period.net for period in periods)
    return (f"MRR movements over {len(periods)} periods, {periods[0].label} to {last.label}, net new MRR "
            f"{amount(total)} in all. Latest, {last.label}: {parts}.")  # fmt: skip


def product_trend(points: Sequence[tuple[dt.date, int]], label: str, locale: str = "en_US") -> Chart:
    """A product count per period (WAU per week, signups per day) with the latest value written."""
    width, height, cid = 600, 200, f"{_slug(label)}-trend@postroom"
    figure = new_figure(width, height)
    if not points:
        no_data(figure, label)
        return render(figure, cid, f"{label}: no data for this period.", width, height)
    days = [day for day, _ in points]
    values = [value for _, value in points]
    drawn = chart_locale(locale)
    axes = figure.add_subplot()
    style_axes(axes)
    x = list(range(len(points)))
    axes.plot(x, values, color=GREEN, linewidth=1.8, marker="o", markersize=3.5)
    axes.annotate(number(values[-1], drawn), (x[-1], values[-1]), xytext=(0, 7), textcoords="offset points",
                  ha="center", va="bottom", **text(fontweight="bold"))  # fmt: skip
    _date_ticks(axes, days, drawn)
    axes.set_ylim(0, max(max(values), 1) * 1.18)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: number(int(value), drawn, compact=True)))
    title(figure, label)
    change = delta(values[-1], values[0], locale=locale)
    alt = (f"{label} over {_span(days, locale)}, from {number(values[0], locale)} to {number(values[-1], locale)}, "
           f"{change.words}; low {number(min(values), locale)}, high {number(max(values), locale)}.")  # fmt: skip
    return render(figure, cid, alt, width, height)


def delivery_health(points: Sequence[DeliveryPoint], locale: str = "en_US") -> Chart:
    """The daemon's own mail per day (REPORTS.md 4.3) as three small multiples sharing the days:
    sent and delivered; bounce rate (bounced / sent) against the 4 % warning; complaint rate
    (complaints / delivered) against Gmail's 0.1 % and 0.3 %."""
    width, height, cid = 600, 360, "delivery-health@postroom"
    figure = new_figure(width, height)
    heading = "Delivery health"
    if not points:
        no_data(figure, heading)
        return render(figure, cid, f"{heading}: no data for this period.", width, height)
    days = [point.day for point in points]
    x = list(range(len(points)))
    drawn = chart_locale(locale)
    counts, bounces, complaints = figure.subplots(3, 1, sharex=True, height_ratios=[2, 1, 1])
    for axes in (counts, bounces, complaints):
        style_axes(axes)
    counts.bar(x, [p.sent for p in points], 0.75, color=LIGHT_GREY, label="Sent")
    counts.bar(x, [p.delivered for p in points], 0.45, color=BLUE, label="Delivered")
    counts.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    counts.yaxis.set_major_formatter(FuncFormatter(lambda value, _: number(int(value), drawn, compact=True)))
    counts.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  prop={"family": FONT, "size": 7.5}, labelcolor=INK)  # fmt: skip
    bounce_rates = [_ratio(p.bounced, p.sent) for p in points]
    complaint_rates = [_ratio(p.complained, p.delivered) for p in points]
    # Thresholds of REPORTS.md 4.3: an ESP's bounce warning; Gmail's complaint target and limit.
    _rate_panel(bounces, x, bounce_rates, "Bounce rate", VERMILLION, "s", ((Decimal("0.04"), "warning"),), 1, drawn)
    _rate_panel(complaints, x, complaint_rates, "Complaint rate", PURPLE, "^",
                ((Decimal("0.001"), "target"), (Decimal("0.003"), "limit")), 2, drawn)  # fmt: skip
    _date_ticks(complaints, days, drawn)
    title(figure, heading)
    sent, delivered = sum(p.sent for p in points), sum(p.delivered for p in points)
    bounced, complained = sum(p.bounced for p in points), sum(p.complained for p in points)
    alt = (f"Delivery over {_span(days, locale)}: {number(sent, locale)} sent, {number(delivered, locale)} delivered, "
           f"{number(bounced, locale)} bounced ({percent(_ratio(bounced, sent), locale, digits=2)} of sent), "
           f"{number(complained, locale)} complaints ({percent(_ratio(complained, delivered), locale, digits=2)} "
           f"of delivered).")  # fmt: skip
    return render(figure, cid, alt, width, height)


def _rate_panel(axes: Axes, x: list[int], rates: list[Decimal | None], label: str, colour: str, marker: str,
                limits: tuple[tuple[Decimal, str], ...], digits: int, locale: str) -> None:  # fmt: skip
    """One rate per day as a line (days without a denominator left as gaps) under its limits."""
    shown = [float(rate) if rate is not None else float("nan") for rate in rates]
    axes.plot(x, shown, color=colour, linewidth=1.4, marker=marker, markersize=3.5, label=label)
    known = [value for value in shown if value == value]
    top = max([*known, float(limits[0][0]) * 1.3]) * 1.15
    for limit, words in limits:
        if limit <= top:
            axes.axhline(float(limit), color=MUTED, linewidth=0.7, linestyle=(0, (4, 3)))
            axes.annotate(f"{percent(limit, locale, digits=digits - 1)} {words}", (1.0, float(limit)),
                          xycoords=("axes fraction", "data"), xytext=(3, 0),
                          textcoords="offset points", va="center", **text(color=MUTED, fontsize=6.5))  # fmt: skip
    axes.set_ylim(0, top)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=3))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: percent(Decimal(str(value)), locale,
                                                                          digits=digits)))
    axes.set_ylabel(label, **text(color=MUTED, fontsize=7))


def chart_locale(locale: str, currency: str = "USD") -> str:
    """The locale for the figures drawn inside a chart: `locale`, unless its dates or compact
    numbers need glyphs the bundled font lacks (ja_JP: "2月2日", "16.7万"); then en_US, whose
    forms every reader of figures knows. The alt text and the text part keep `locale`: they are
    the authoritative words, the picture is an aid."""
    samples = (day_label(dt.date(2026, 12, 31), locale), money_compact(12_345_678_900, currency, locale),
               money(-123_456, currency, locale), number(12_345_678, locale, compact=True), percent(0.5, locale))  # fmt: skip
    return locale if all(drawable(sample) for sample in samples) else "en_US"


def _date_ticks(axes: Axes, days: Sequence[dt.date], locale: str) -> None:
    """At most seven date labels, always the last day."""
    step = max(1, -(-len(days) // 7))
    ticks = list(range(len(days) - 1, -1, -step))[::-1]
    axes.set_xticks(ticks, [day_label(days[i], locale) for i in ticks])
    axes.set_xlim(-0.6, len(days) - 0.4)


def _span(days: Sequence[dt.date], locale: str) -> str:
    """ "12 weeks, Feb 2 – Apr 20, 2026" when the points are a week apart, else the dates."""
    dates = date_range_label(days[0], days[-1], locale)
    gaps = {(b - a).days for a, b in zip(days, days[1:])}
    unit = {7: "weeks", 1: "days"}.get(gaps.pop()) if len(gaps) == 1 else None
    return f"{len(days)} {unit}, {dates}" if unit else dates


def _ratio(part: int, whole: int) -> Decimal | None:
    return Decimal(part) / Decimal(whole) if whole else None


def _slug(label: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split()) or "trend"
