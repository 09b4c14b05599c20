"""Currencies, minor units and exchange rates. Money is integer minor units; rates and
intermediate values are `Decimal`; rounding is half-even, once per customer (MRR.md S-7, S-9)."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

# ISO 4217 currencies Stripe treats as zero-decimal: an amount of 500 JPY is 500, not 5.00.
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof",
    "xpf",
})  # fmt: skip
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    """Digits after the decimal point of a currency's minor unit."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    return 3 if code in THREE_DECIMAL else 2


_TIE = Decimal("1e-15")


def round_minor(value: Decimal) -> int:
    """Half-even to a whole minor unit. The monthly factors (1/12, 365/12, 1/n) have no exact
    decimal form, so an exact tie such as 30 x 365/12 = 912.5 arrives as 912.50...01 and would
    round up: snap to 15 places first (below any price's precision, above the 28-digit noise)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return int(value.quantize(_TIE, rounding=ROUND_HALF_EVEN).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class UnknownRate(LookupError):
    def __init__(self, currency: str, reporting: str):
        super().__init__(f"no exchange rate from {currency.upper()} to {reporting.upper()}: "
                         f"set [mrr.fx_rates] {currency.lower()} or `postroom fx set DATE {currency.upper()} RATE`")  # fmt: skip
        self.currency = currency


@dataclass
class FxTable:
    """Rates to the reporting currency: dated rates (the latest on or before a day wins), else the
    static `[mrr.fx_rates]`. A rate is major units of the reporting currency per major unit of the
    other; minor units convert through both exponents."""

    reporting: str
    static: Mapping[str, Decimal] = field(default_factory=dict)
    _days: dict[str, list[dt.date]] = field(default_factory=dict)
    _rates: dict[str, list[Decimal]] = field(default_factory=dict)

    @classmethod
    def of(cls, reporting: str, static: Mapping[str, Decimal],
           dated: Iterable[tuple[str, dt.date, Decimal]] = ()) -> FxTable:  # fmt: skip
        table = cls(reporting.lower(), {k.lower(): v for k, v in static.items()})
        for currency, day, rate in sorted(dated, key=lambda row: (row[0].lower(), row[1])):
            table._days.setdefault(currency.lower(), []).append(day)
            table._rates.setdefault(currency.lower(), []).append(rate)
        return table

    def rate(self, currency: str, day: dt.date) -> Decimal:
        code = currency.lower()
        if code == self.reporting:
            return Decimal(1)
        days = self._days.get(code, [])
        at = bisect.bisect_right(days, day)
        if at:
            return self._rates[code][at - 1]
        if code in self.static:
            return self.static[code]
        raise UnknownRate(code, self.reporting)

    def convert(self, minor: int, currency: str, day: dt.date) -> int:
        """`minor` units of `currency` in minor units of the reporting currency on `day`, rounded."""
        if currency.lower() == self.reporting:
            return minor
        shift = exponent(self.reporting) - exponent(currency)
        return round_minor(Decimal(minor) * self.rate(currency, day) * Decimal(10) ** shift)
