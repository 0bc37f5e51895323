"""Built-in teachers (each module is one of fmmkit's default plugins)."""
