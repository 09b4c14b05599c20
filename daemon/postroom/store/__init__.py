"""Persistence: SQLAlchemy tables, Alembic migrations, the engine, and repositories.

SQLite (WAL, synchronous=FULL) is the embedded default; PostgreSQL serves several daemons.
Driver errors are translated into `StoreError` here and never leave this package raw.
"""
