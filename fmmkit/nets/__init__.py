"""Built-in nets (each module is one of fmmkit's default plugins)."""
