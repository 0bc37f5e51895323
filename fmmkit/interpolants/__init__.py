"""Built-in interpolants (each module is one of fmmkit's default plugins)."""
