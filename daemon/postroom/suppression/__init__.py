"""Suppression: the addresses postroom will not send to, per stream or globally, each with its
provenance. `rules` decides (pure) what a bounce or complaint does to the list; `sql_store` keeps
the list; `service` is what the submission door, the HTTP API, the CLI and the event outbox use.
"""
