"""PostHog: capture of postroom's lifecycle events (and, later, queries for reports)."""
