"""Built-in losses (each module is one of fmmkit's default plugins)."""
