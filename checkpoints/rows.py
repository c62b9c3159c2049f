"""Small SQL helpers for the operational tables, on both dialects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine


def insert_ignore(engine: AsyncEngine, table: Table, **values: Any) -> Executable:
    """``INSERT … ON CONFLICT DO NOTHING``: writing a row twice (a replayed node) changes nothing."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    return insert(table).values(**values).on_conflict_do_nothing()
