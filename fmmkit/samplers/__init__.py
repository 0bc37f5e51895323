"""Built-in samplers (each module is one of fmmkit's default plugins)."""
