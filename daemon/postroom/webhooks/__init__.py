"""Outbound webhooks: endpoints subscribe to event types; the outbox consumer enqueues one delivery
per (event, subscribed endpoint) in the outbox transaction; the sender posts them signed with the
Standard Webhooks scheme, retried with backoff, disabling an endpoint after a long failure streak;
replay sends events again."""
