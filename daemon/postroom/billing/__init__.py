"""Stripe billing state mirrored locally: webhooks in (`webhooks`, `events`), applied in the order of
each object's state (`apply`, `store`), backfilled and reconciled from Stripe's API (`sync`,
`stripe_api`). The MRR arithmetic lives in postroom.mrr."""
