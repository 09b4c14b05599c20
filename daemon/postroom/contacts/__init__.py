"""Contacts: the people an application mails, with typed custom properties, mailing-list memberships
and the events they triggered; what the Loops-compatible API's `contacts/*`, `lists` and
`events/send` calls read and write, and what `postroom contacts import|export|erase` move.

`model` holds the values and the pure rules (property types, coercion, which fields a request
changes); `sql_store` the tables (and `sql_batch` an import's batches of rows); `service` what the
API and the command line ask; `csv_io` the audience files' format, and `audience` reading and
writing them.
"""
