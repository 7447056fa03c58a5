"""``python -m hetsched`` is the ``hetsched`` command."""

import sys

from hetsched.cli import main

sys.exit(main())
