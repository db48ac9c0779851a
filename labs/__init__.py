"""The lab catalog: models (pure), loader (reads files) and the lab YAML files themselves."""
