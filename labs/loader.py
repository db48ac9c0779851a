"""Reads lab YAML files into labs.models with located errors (FILE:LINE:COL: field.path: message)."""
