"""Scheduled and on-demand reports: revenue from the MRR ledger, product figures from PostHog and
postroom's own delivery figures, rendered with charts and mailed through postroom itself, once
per (report, period) however many daemons run."""
