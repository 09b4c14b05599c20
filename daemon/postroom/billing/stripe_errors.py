"""What can go wrong reading Stripe's API, without importing the stripe SDK (its ~30 MB are paid
only by a process that reads Stripe: see `stripe_api`)."""

from __future__ import annotations

from postroom.core.errors import PostroomError


class StripeApiError(PostroomError):
    """Stripe did not give us what we asked for; `reason` is safe to log (never the API key)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class StripeUnavailable(StripeApiError):
    """Stripe could not be reached, or kept answering 5xx / 429 after every retry: try later."""


class StripeAuthFailed(StripeApiError):
    """Stripe refused the API key (401) or the key lacks permission to read (403): fix the config."""


class StripeNotFound(StripeApiError):
    """The object asked for does not exist in this Stripe account (404)."""


class StripeRefused(StripeApiError):
    """Stripe refused the request itself (400 and other 4xx): a defect on our side, not transient."""
