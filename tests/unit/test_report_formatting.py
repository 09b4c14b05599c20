"""Report figures in words (postroom.reports.formatting): money by locale and minor unit (USD 2,
JPY 0, KWD 3 decimals; negatives), compact money for axes, counts, percentages, deltas with
arrows and words, the 4-period average and date ranges, in en_US, de_DE and ja_JP."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from postroom.reports.formatting import (date_range_label, day_label, delta, major, money, money_compact, number,
                                         percent, vs_average)  # fmt: skip

NBSP, THIN = "\xa0", "\u2009"


@pytest.mark.parametrize(("minor", "currency", "locale", "expected"), [
    (166_820, "USD", "en_US", "$1,668.20"),
    (187_800, "USD", "de_DE", f"1.878,00{NBSP}$"),
    (187_800, "usd", "ja_JP", "$1,878.00"),
    (-6_000, "USD", "en_US", "-$60.00"),
    (-6_000, "EUR", "de_DE", f"-60,00{NBSP}€"),
    (1_668, "JPY", "en_US", "¥1,668"),
    (1_668, "JPY", "ja_JP", "￥1,668"),
    (-1_668, "JPY", "de_DE", f"-1.668{NBSP}¥"),
    (1_234, "KWD", "en_US", "KWD1.234"),
    (0, "USD", "en_US", "$0.00"),
])  # fmt: skip
def test_money_by_locale_and_minor_unit(minor: int, currency: str, locale: str, expected: str) -> None:
    assert money(minor, currency, locale) == expected


def test_minor_units_follow_the_ledger_exponent() -> None:
    # ISK: CLDR shows no decimals, but Stripe and the ledger keep two (MRR.md S-9): 10000 is 100 kr.
    assert major(10_000, "ISK") == Decimal("100.00")
    assert major(500, "JPY") == Decimal(500)
    assert money(10_000, "ISK", "en_US") == "ISK100"


@pytest.mark.parametrize(("minor", "currency", "locale", "expected"), [
    (166_820, "USD", "en_US", "$1.7K"),
    (16_682_000, "EUR", "en_US", "€166.8K"),
    (-23_000, "USD", "en_US", "-$230"),
    (50, "USD", "en_US", "$0"),
    (166_820, "USD", "de_DE", f"1.668{NBSP}$"),
    (250_000_000, "EUR", "de_DE", f"2,5{NBSP}Mio.{NBSP}€"),
    (16_682_000, "USD", "ja_JP", "$16.7万"),
    (200_000, "JPY", "ja_JP", "￥20万"),
])  # fmt: skip
def test_money_compact(minor: int, currency: str, locale: str, expected: str) -> None:
    assert money_compact(minor, currency, locale) == expected


def test_number_and_percent() -> None:
    assert number(12_345, "en_US") == "12,345"
    assert number(12_345, "de_DE") == "12.345"
    assert number(12_345, "en_US", compact=True) == "12.3K"
    assert number(999, "en_US", compact=True) == "999"
    assert number(12_345, "ja_JP", compact=True) == "1.2万"
    assert percent(Decimal("0.0591")) == "5.9%"
    assert percent(0.0591, "de_DE") == f"5,9{NBSP}%"
    assert percent(Decimal("0.17383"), "ja_JP", digits=2) == "17.38%"
    assert percent(Decimal("-0.035")) == "-3.5%"
    assert percent(None) == "n/a"
    assert percent(None, "de_DE") == "n/a"


def test_delta_up_down_same_and_unknown() -> None:
    up = delta(187_800, 166_820, currency="USD")
    assert (up.abs, up.text, up.words, up.sign) == (20_980, "▲ +$209.80 (+12.6%)", "up $209.80 (+12.6%)", 1)
    assert up.pct == Decimal(20_980) / Decimal(166_820)
    down = delta(166_820, 172_820, currency="USD")
    assert (down.text, down.words, down.sign) == ("▼ -$60.00 (-3.5%)", "down $60.00 (-3.5%)", -1)
    same = delta(5, 5)
    assert (same.abs, same.text, same.words, same.sign) == (0, "= no change", "no change", 0)
    unknown = delta(5, None)
    assert (unknown.abs, unknown.pct, unknown.text, unknown.sign) == (None, None, "n/a", 0)
    from_zero = delta(25_000, 0, currency="USD")
    assert (from_zero.pct, from_zero.text) == (None, "▲ +$250.00 (n/a)")


def test_delta_counts_and_locales() -> None:
    assert delta(1_569, 1_204).text == "▲ +365 (+30.3%)"
    assert delta(1_569, 1_204, locale="de_DE").text == f"▲ +365 (+30,3{NBSP}%)"
    assert delta(1_000, 1_668, currency="JPY", locale="ja_JP").text == "▼ -￥668 (-40.0%)"
    # A negative reference: the percentage is of its size, so a rise reads as a rise.
    assert delta(-50, -100).text == "▲ +50 (+50.0%)"


def test_vs_average_uses_the_last_four_periods() -> None:
    history = [100_000, 150_000, 160_000, 170_000, 180_000]  # the first is older than four periods
    average = vs_average(187_800, history, currency="USD")
    assert average.abs == 187_800 - 165_000
    assert average.text == "▲ +$228.00 (+13.8%)"
    assert vs_average(10, [9, 10, 10]).abs == 0  # 9.67 rounds half-even to 10
    assert vs_average(10, [10, 11]).abs == 0  # 10.5 rounds half-even to 10
    assert vs_average(10, []).text == "n/a"
    assert vs_average(10, [0, 0, 0, 0]).text == "▲ +10 (n/a)"
    assert vs_average(90, [100, 100], periods=2).text == "▼ -10 (-10.0%)"


def test_date_ranges_and_days() -> None:
    february = (dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert date_range_label(*february, "en_US") == f"Feb 1{THIN}–{THIN}28, 2026"
    assert date_range_label(*february, "de_DE") == "1.–28. Feb. 2026"
    assert date_range_label(*february, "ja_JP") == "2026年2月1日～28日"
    assert date_range_label(dt.date(2025, 12, 29), dt.date(2026, 1, 4), "en_US") == f"Dec 29, 2025{THIN}–{THIN}Jan 4, 2026"
    assert date_range_label(dt.date(2026, 2, 1), dt.date(2026, 2, 1), "en_US") == "Feb 1, 2026"
    assert day_label(dt.date(2026, 2, 2), "de_DE") == "2. Feb."
