"""Scheduled and on-demand reports: the weekly summary, the monthly executive report and the
delivery KPIs of shared/specs/REPORTS.md section 4. Numbers in words by locale and currency
(`formatting`, Babel), charts drawn to PNG with alt text (`charts`, on the drawing surface of
`canvas`: matplotlib's Agg backend through its object API only), and `demo`, which draws every
chart for a look. These modules are pure: they take plain values (integer minor units, dates,
labels) and return strings and bytes; no database, no clock, no settings."""
