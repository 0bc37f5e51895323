"""Built-in data (each module is one of fmmkit's default plugins)."""
