"""The HTTP API (FastAPI): what a learning platform's app calls instead of LabClient (docs/api.md)."""
