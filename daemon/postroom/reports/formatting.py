"""Numbers, money, percentages, deltas and date ranges in words, by locale (Babel, CLDR). Money
arrives as integer minor units in the ledger's exponent (`mrr.money.exponent`, Stripe's: JPY 0,
KWD 3, ISK 2) and is shown with the currency's CLDR digits. Every report figure that reaches a
reader, in the HTML, the text part or a chart's alt text, is written by one of these functions,
so the three always agree."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from babel import Locale
from babel.dates import format_interval, format_skeleton
from babel.numbers import (format_compact_currency, format_compact_decimal, format_currency, format_decimal,
                           get_plus_sign_symbol, parse_pattern)  # fmt: skip

from postroom.mrr.money import exponent

NOT_AVAILABLE = "n/a"
UP, DOWN, SAME = "▲", "▼", "="


def major(minor: int, currency: str) -> Decimal:
    """`minor` units as a Decimal amount of the major unit (12345 USD -> 123.45)."""
    return Decimal(minor).scaleb(-exponent(currency))


def money(minor: int, currency: str, locale: str) -> str:
    """`money(-98000, "USD", "en_US")` -> "-$980.00"; JPY shows no decimals ("￥1,668" in ja_JP)."""
    return format_currency(major(minor, currency), currency.upper(), locale=locale)


def money_compact(minor: int, currency: str, locale: str) -> str:
    """For axis ticks and tight cells: "$1.7K", "1,7 Mio. €", "$16.7万". Below the locale's first
    compact magnitude (1,000 in en, 1,000,000 in de, 10,000 in ja) the whole amount, no decimals."""
    amount = major(minor, currency)
    if abs(amount) < _first_compact_magnitude(locale):
        pattern = copy.copy(parse_pattern(Locale.parse(locale).currency_formats["standard"]))
        pattern.frac_prec = (0, 0)
        return str(pattern.apply(amount, Locale.parse(locale), currency=currency.upper(), currency_digits=False))
    return format_compact_currency(amount, currency.upper(), locale=locale, fraction_digits=1)


def number(value: int | Decimal, locale: str, *, compact: bool = False) -> str:
    """A count: "12,345" ("12.345" in de_DE); `compact` gives "12.3K"."""
    if compact and abs(Decimal(value)) >= _first_compact_magnitude(locale):
        return format_compact_decimal(value, locale=locale, fraction_digits=1)
    return format_decimal(value, locale=locale)


def percent(value: Decimal | float | None, locale: str = "en_US", *, digits: int = 1) -> str:
    """A ratio as a percentage with `digits` decimals: 0.0591 -> "5.9%" ("5,9 %" in de_DE);
    None (no denominator) -> "n/a"."""
    if value is None:
        return NOT_AVAILABLE
    pattern = copy.copy(parse_pattern(Locale.parse(locale).percent_formats[None]))
    pattern.frac_prec = (digits, digits)
    return str(pattern.apply(Decimal(str(value)) if isinstance(value, float) else value, Locale.parse(locale)))


@dataclass(frozen=True)
class Delta:
    """A change from a reference value: `abs` in the value's units (minor units for money), `pct`
    as a ratio (None when there is no reference or it is zero), `text` for a table cell:
    "▲ +$98.00 (+5.9%)", "▼ -$60.00 (-3.5%)", "= no change", or "n/a"; and `words` for a
    sentence read aloud (alt text, the text part): "up $98.00 (+5.9%)", "down $60.00 (-3.5%)"."""

    abs: int | None
    pct: Decimal | None
    text: str
    words: str

    @property
    def sign(self) -> int:
        """1 up, -1 down, 0 unchanged or unknown: the colour and the arrow of a cell."""
        return 0 if not self.abs else (1 if self.abs > 0 else -1)


def delta(current: int, previous: int | None, *, currency: str | None = None, locale: str = "en_US") -> Delta:
    """`current` against `previous`; money when `currency` is given, else a count."""
    if previous is None:
        return Delta(None, None, NOT_AVAILABLE, NOT_AVAILABLE)
    change = current - previous
    ratio = (Decimal(change) / abs(Decimal(previous))) if previous else None
    if change == 0:
        return Delta(0, ratio, f"{SAME} no change", "no change")

    def shown(value: int) -> str:
        return money(value, currency, locale) if currency else number(value, locale)

    plus = get_plus_sign_symbol(locale) if change > 0 else ""
    pct = NOT_AVAILABLE if ratio is None else (plus + percent(ratio, locale))
    return Delta(change, ratio, f"{UP if change > 0 else DOWN} {plus}{shown(change)} ({pct})",
                 f"{'up' if change > 0 else 'down'} {shown(abs(change))} ({pct})")  # fmt: skip


def vs_average(current: int, history: Sequence[int], *, currency: str | None = None, locale: str = "en_US",
               periods: int = 4) -> Delta:  # fmt: skip
    """`current` against the mean of the last `periods` values of `history` (oldest first, the
    current period excluded), rounded half-even to a whole unit; "n/a" without history."""
    recent = list(history)[-periods:]
    if not recent:
        return delta(current, None, currency=currency, locale=locale)
    mean = (Decimal(sum(recent)) / len(recent)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return delta(current, int(mean), currency=currency, locale=locale)


def date_range_label(start: dt.date, end: dt.date, locale: str) -> str:
    """Both ends inclusive: "Feb 1 – 28, 2026", "1.–28. Feb. 2026", "2026年2月1日～28日"."""
    if start == end:
        return format_skeleton("yMMMd", start, locale=locale)
    return format_interval(start, end, "yMMMd", locale=locale)


def day_label(day: dt.date, locale: str) -> str:
    """A short day for axes and tables: "Feb 2", "2. Feb.", "2月2日"."""
    return format_skeleton("MMMd", day, locale=locale)


def _first_compact_magnitude(locale: str) -> int:
    """The smallest magnitude the locale writes in compact form ("0K" from 1000 in en; de starts
    at a million because "Tsd." is not used in the short form)."""
    formats = Locale.parse(locale).compact_decimal_formats["short"]["other"]
    return min((int(size) for size, pattern in formats.items() if set(pattern.pattern) - {"0"}), default=1000)
