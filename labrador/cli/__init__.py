"""The `labrador` command line (typer)."""
