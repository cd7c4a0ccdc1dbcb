"""Database layer: engine and session factory, typed ORM tables, migration helpers."""
