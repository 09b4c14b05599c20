"""PostHog: capture of postroom's lifecycle events, queries for reports (the Query API), and its
alert webhooks in."""
