"""Models from other frameworks: modules built from factories with local weights, called and converted
to fmmkit's velocity (no downloads; pickles only when a spec allows them)."""
