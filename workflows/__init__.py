"""Deterministic Temporal workflows. No I/O here: see the import contract in pyproject.toml."""
