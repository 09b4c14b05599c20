"""Report charts (postroom.reports.charts) drawn from the worked month of shared/specs/MRR.md:
real PNGs at twice their CSS size, alt text that states the figures, a "no data" chart instead of
a crash, the same bytes for the same input (also from a thread pool), a palette that greyscale
keeps apart, and no figure or memory left behind after hundreds of renders."""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gc
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from matplotlib import colors
from matplotlib.figure import Figure

from postroom.reports import canvas
from postroom.reports.charts import (Chart, DeliveryPoint, PeriodMovements, chart_locale, delivery_health,
                                     movements_waterfall, mrr_sparkline, product_trend)  # fmt: skip
from postroom.reports.demo import WORKED_MONTH, demo_charts, demo_months

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WEEKS = [dt.date(2025, 12, 1) + dt.timedelta(weeks=i) for i in range(12)]
MRR = [166_820, 168_300, 167_950, 171_200, 173_800, 172_900, 176_400, 179_100, 181_000, 180_200, 184_600, 187_800]
DAYS = [dt.date(2026, 2, 1) + dt.timedelta(days=i) for i in range(7)]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def assert_image(chart: Chart) -> None:
    assert png_size(chart.png) == (chart.width * canvas.SCALE, chart.height * canvas.SCALE)
    assert chart.content_id.endswith("@postroom")
    assert chart.alt.endswith(".")


def test_sparkline_of_twelve_weeks() -> None:
    chart = mrr_sparkline(list(zip(WEEKS, MRR)), "USD", "en_US")
    assert_image(chart)
    assert (chart.content_id, chart.width, chart.height) == ("mrr-sparkline@postroom", 600, 160)
    assert chart.alt.startswith("MRR over 12 weeks, Dec 1, 2025")
    assert "from $1,668.20 to $1,878.00, up $209.80 (+12.6%)" in chart.alt


def test_sparkline_in_german_and_yen() -> None:
    chart = mrr_sparkline([(WEEKS[0], 100_000), (WEEKS[1], 90_000)], "JPY", "de_DE")
    assert_image(chart)
    assert "von" not in chart.alt  # the sentence is English; the figures are German
    assert "from 100.000\xa0¥ to 90.000\xa0¥, down 10.000\xa0¥ (-10,0\xa0%)" in chart.alt


def test_waterfall_of_the_worked_month() -> None:
    chart = movements_waterfall([WORKED_MONTH], "USD", "en_US")
    assert_image(chart)
    assert chart.alt == ("MRR movements for Feb 2026: new $250.00, expansion $98.00, reactivation $150.00, "
                         "contraction -$60.00, churn -$230.00, FX $1.80; net new MRR $209.80.")  # fmt: skip
    assert WORKED_MONTH.net == 187_800 - 166_820


def test_waterfall_of_twelve_months_with_losses_and_negative_fx() -> None:
    months = [PeriodMovements(f"M{i}", new=10_000, expansion=2_000, reactivation=0, contraction=3_000,
                              churn=20_000, fx=-500) for i in range(11)] + [WORKED_MONTH]  # fmt: skip
    chart = movements_waterfall(months, "EUR", "de_DE")
    assert_image(chart)
    assert "12 periods, M0 to Feb 2026" in chart.alt
    # 11 x (100 + 20 - 30 - 200 - 5) + 209.80 = -1,055.20
    assert "net new MRR -1.055,20\xa0€ in all" in chart.alt
    assert "contraction -60,00\xa0€, churn -230,00\xa0€, FX 1,80\xa0€" in chart.alt


def test_product_trend_and_delivery_health() -> None:
    trend = product_trend([(w, 1_204 + 31 * i) for i, w in enumerate(WEEKS)], "Weekly active users")
    assert_image(trend)
    assert trend.content_id == "weekly-active-users-trend@postroom"
    assert "from 1,204 to 1,545, up 341 (+28.3%)" in trend.alt
    days = [DeliveryPoint(day, sent=1_000, delivered=980, bounced=15, complained=1) for day in DAYS]
    days.append(DeliveryPoint(dt.date(2026, 2, 8), sent=0, delivered=0, bounced=0, complained=0))
    health = delivery_health(days)
    assert_image(health)
    assert health.alt == ("Delivery over 8 days, Feb 1\u2009–\u20098, 2026: 7,000 sent, 6,860 delivered, 105 bounced "
                          "(1.50% of sent), 7 complaints (0.10% of delivered).")  # fmt: skip


@pytest.mark.parametrize("draw", [
    lambda: mrr_sparkline([], "USD", "en_US"),
    lambda: movements_waterfall([], "USD", "en_US"),
    lambda: product_trend([], "Signups"),
    lambda: delivery_health([]),
])  # fmt: skip
def test_empty_data_draws_a_chart_that_says_so(draw: Callable[[], Chart]) -> None:
    chart = draw()
    assert_image(chart)
    assert chart.alt.endswith(": no data for this period.")


@pytest.mark.parametrize("draw", [
    lambda: mrr_sparkline([(WEEKS[0], 0)], "USD", "en_US"),
    lambda: mrr_sparkline([(WEEKS[0], 5), (WEEKS[2], 5)], "USD", "en_US"),
    lambda: movements_waterfall([PeriodMovements("Feb", 0, 0, 0, 0, 0, 0)], "USD", "en_US"),
    lambda: movements_waterfall([PeriodMovements("Feb", 0, 0, 0, 5_000, 9_000, -40)], "JPY", "ja_JP"),
    lambda: product_trend([(WEEKS[0], 0)], "WAU"),
    lambda: delivery_health([DeliveryPoint(DAYS[0], 0, 0, 0, 0)]),
    lambda: delivery_health([DeliveryPoint(DAYS[0], 100, 0, 100, 0)]),
])  # fmt: skip
def test_degenerate_series_draw(draw: Callable[[], Chart]) -> None:
    assert_image(draw())


def test_locales_the_font_cannot_draw_fall_back_in_the_picture_only() -> None:
    # DejaVu Sans has no CJK: "2月2日" and "16.7万" would be empty boxes (and a warning, an error here).
    assert chart_locale("ja_JP", "JPY") == "en_US"
    assert chart_locale("hi_IN", "INR") == "en_US"
    assert chart_locale("de_DE", "EUR") == "de_DE"
    assert chart_locale("ru_RU", "RUB") == "ru_RU"
    chart = mrr_sparkline([(WEEKS[0], 100_000), (WEEKS[1], 120_000)], "JPY", "ja_JP")
    assert_image(chart)
    assert "2025年12月1日～8日, from ￥100,000 to ￥120,000, up ￥20,000 (+20.0%)" in chart.alt
    assert_image(movements_waterfall([WORKED_MONTH], "JPY", "ja_JP"))
    assert_image(delivery_health([DeliveryPoint(DAYS[0], 10, 9, 1, 0)], "ja_JP"))


def test_same_input_same_bytes_also_in_threads() -> None:
    first = demo_charts()
    second = demo_charts()
    assert {name: chart.png for name, chart in first.items()} == {name: chart.png for name, chart in second.items()}
    assert b"Software" not in first["movements-12"].png and b"tIME" not in first["movements-12"].png
    # Reports draw in a thread pool (STYLE.md rule 9): no shared state may leak between renders.
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda _: movements_waterfall(demo_months(), "USD", "en_US").png, range(6)))
    assert set(threaded) == {first["movements-12"].png}


def test_palette_neighbours_differ_in_greyscale() -> None:
    def luminance(colour: str) -> float:
        red, green, blue = colors.to_rgb(colour)
        return 0.2126 * red + 0.7152 * green + 0.0722 * blue

    stack = [canvas.BLUE, canvas.SKY, canvas.GREEN, canvas.YELLOW]  # new, expansion, reactivation, FX upwards
    assert all(abs(luminance(a) - luminance(b)) > 0.1 for a, b in zip(stack, stack[1:]))
    assert abs(luminance(canvas.ORANGE) - luminance(canvas.VERMILLION)) > 0.1  # contraction, churn
    assert all(luminance(colour) < 0.9 for colour in [*stack, canvas.ORANGE, canvas.VERMILLION, canvas.LIGHT_GREY])


def rss_bytes() -> int:
    """Resident memory after a collection, less what glibc keeps in its free lists (malloc_trim):
    growth then means memory still in use, not an allocator's cache of freed blocks."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_no_figure_or_memory_left_after_200_renders() -> None:
    from matplotlib import pyplot  # registered figures would show here if a chart used pyplot

    days = [DeliveryPoint(day, 100, 98, 2, 0) for day in DAYS[:4]]
    draws = [
        lambda: mrr_sparkline(list(zip(WEEKS[:4], MRR[:4])), "USD", "en_US"),
        lambda: movements_waterfall([WORKED_MONTH], "USD", "en_US"),
        lambda: product_trend([(w, 10 * i) for i, w in enumerate(WEEKS[:4])], "WAU"),
        lambda: delivery_health(days),
    ]
    for index in range(20):
        draws[index % 4]()
    after_20 = rss_bytes()
    for index in range(180):
        draws[index % 4]()
    after_200 = rss_bytes()  # collects first: a figure is a web of reference cycles, freed by the collector
    assert pyplot.get_fignums() == []
    assert [obj for obj in gc.get_objects() if isinstance(obj, Figure)] == []
    assert after_200 - after_20 < 10 * 1024 * 1024
