"""An example fmmkit plugin: how a third party adds an interpolant, a data set and a loss."""

__version__ = "0.1.0"
