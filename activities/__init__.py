"""Thin Temporal activities: unpack a model, call a port or library, map errors, heartbeat."""
