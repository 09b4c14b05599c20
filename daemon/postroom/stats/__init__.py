"""Delivery analytics: counts, bounce breakdowns and latency percentiles per stream, template,
recipient domain and period, computed in SQL over events, deliveries and messages; and the
bounce and complaint rate gauges mailbox providers judge senders by."""
