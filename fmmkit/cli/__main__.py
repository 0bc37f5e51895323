"""``python -m fmmkit.cli`` (and ``torchrun ... -m fmmkit.cli``) runs the ``fmmkit`` command."""

import sys

from fmmkit.cli.commands import main

sys.exit(main())
