"""The ``fmmkit`` command (``fmmkit.cli:main``; ``python -m fmmkit.cli``)."""

from fmmkit.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
