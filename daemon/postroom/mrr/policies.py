"""The MRR policies: every choice the vendors make differently (MRR.md section 1.1), named in
`[mrr]` and printed with every figure. Defaults are the spec's (forever-only discounts, pause
counts zero, churn at the end of the paid period, past_due counted without a limit)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


class DiscountPolicy(enum.StrEnum):
    FOREVER_ONLY = "forever_only"  # Stripe's default: only forever coupons reduce MRR
    ALL_ACTIVE = "all_active"  # once/repeating coupons reduce MRR too, until the discount ends


class ChurnRecognition(enum.StrEnum):
    AT_END = "at_end"  # a scheduled cancellation keeps its MRR until the subscription is deleted
    AT_REQUEST = "at_request"  # MRR leaves when the cancellation is scheduled


class PausePolicy(enum.StrEnum):
    ZERO = "zero"  # pause_collection set: the subscription is worth 0 (ProfitWell)
    COUNT = "count"  # paused collection still counts (ChartMogul)


class FreeCustomer(enum.StrEnum):
    CHURN = "churn"  # a discount that takes a customer to 0 is churn (Baremetrics)
    CONTRACTION = "contraction"  # ... or a contraction, the customer still counted as a customer


@dataclass(frozen=True)
class Policies:
    reporting_currency: str = "usd"
    discounts: DiscountPolicy = DiscountPolicy.FOREVER_ONLY
    churn_recognition: ChurnRecognition = ChurnRecognition.AT_END
    pause: PausePolicy = PausePolicy.ZERO
    past_due_grace_days: int | None = None  # None: past_due counts until the subscription changes
    free_customer: FreeCustomer = FreeCustomer.CHURN
    week_factor: Decimal = field(default_factory=lambda: Decimal(52) / Decimal(12))
    day_factor: Decimal = field(default_factory=lambda: Decimal(365) / Decimal(12))
    grouping_window_minutes: int = 60  # one customer's changes this close together net into one movement

    def described(self) -> dict[str, Any]:
        """The policies as printed beside every figure (JSON-ready)."""
        return {
            "reporting_currency": self.reporting_currency,
            "discounts": self.discounts.value,
            "churn_recognition": self.churn_recognition.value,
            "pause": self.pause.value,
            "past_due_grace_days": self.past_due_grace_days,
            "free_customer": self.free_customer.value,
            "metered": "exclude",
            "tax": "exclude",
            "week_factor": str(self.week_factor.quantize(Decimal("0.0001"))),
            "day_factor": str(self.day_factor.quantize(Decimal("0.0001"))),
            "grouping_window_minutes": self.grouping_window_minutes,
            "rounding": "per customer, half even",
        }
