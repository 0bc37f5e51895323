"""fmmkit's version, apart from the package face so the engine and the registry can read it."""

__version__ = "0.1.0"
