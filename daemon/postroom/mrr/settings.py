"""`[mrr]`: the policies of MRR.md with its defaults, and `[mrr.fx_rates]`, static rates to the
reporting currency (dated rates from `postroom fx set|import` take precedence from their day)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.mrr.policies import ChurnRecognition, DiscountPolicy, FreeCustomer, PausePolicy, Policies


class MrrSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reporting_currency: str = Field(default="usd", pattern=r"^[A-Za-z]{3}$")
    discounts: DiscountPolicy = DiscountPolicy.FOREVER_ONLY
    churn_recognition: ChurnRecognition = ChurnRecognition.AT_END
    pause: PausePolicy = PausePolicy.ZERO
    # Days a past_due subscription keeps counting after its first failed payment; 0 = off (no limit).
    past_due_grace_days: int = Field(default=0, ge=0, le=3650)
    free_customer: FreeCustomer = FreeCustomer.CHURN
    # Monthly factors of weekly and daily prices (calendar-exact by default: 52/12 and 365/12).
    week_factor: Decimal = Field(default=Decimal(52) / Decimal(12), gt=0)
    day_factor: Decimal = Field(default=Decimal(365) / Decimal(12), gt=0)
    # One customer's changes this close together count as one movement (a plan swap).
    grouping_window_minutes: int = Field(default=60, ge=0, le=7 * 24 * 60)
    # Currency (ISO code) -> major units of the reporting currency per major unit.
    fx_rates: dict[str, Decimal] = Field(default_factory=dict)

    @field_validator("reporting_currency")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("fx_rates")
    @classmethod
    def _rates(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for currency, rate in value.items():
            if len(currency) != 3 or not currency.isalpha():
                raise ValueError(f"{currency!r} is not a three-letter currency code")
            if rate <= 0:
                raise ValueError(f"{currency}: a rate must be above 0")
        return {currency.lower(): rate for currency, rate in value.items()}

    def policies(self) -> Policies:
        return Policies(
            reporting_currency=self.reporting_currency,
            discounts=self.discounts,
            churn_recognition=self.churn_recognition,
            pause=self.pause,
            past_due_grace_days=self.past_due_grace_days or None,
            free_customer=self.free_customer,
            week_factor=self.week_factor,
            day_factor=self.day_factor,
            grouping_window_minutes=self.grouping_window_minutes,
        )
