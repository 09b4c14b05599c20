"""On-demand exports: the kinds of rows an operator can take out of postroom (deliveries, bounces,
suppressions, contacts, and whatever another package registers), the date range they filter on, and
the CSV and JSON lines writers. `postroom export` and `GET /v1/exports/{kind}` both stream through
`export_chunks`; neither ever holds a whole table.
"""
