"""Built-in metrics (each module is one of fmmkit's default plugins)."""
