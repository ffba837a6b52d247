"""``python -m emu`` is the ``emu`` command."""

import sys

from .cli import main

sys.exit(main())
