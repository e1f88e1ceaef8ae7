"""Persistence behind a small interface (SQLite embedded; PostgreSQL can replace it)."""
