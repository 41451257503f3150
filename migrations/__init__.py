"""Alembic migrations: the only thing that creates or changes tutord's tables.

`daemon/migrate.py` points Alembic at this folder; `env.py` renders batch-mode
migrations on SQLite so that ALTERs work there too.
"""
