"""Data from outside services postroom reads or feeds (Stripe, PostHog)."""
