"""Alembic migrations of the service's schema, installed with the package (``script_location = migrations:``).

Each revision holds its own literal values (dimensions, names); none imports the ORM's constants.
"""
