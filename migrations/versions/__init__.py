"""Revisions, one file each (Alembic skips this file)."""
