"""``python -m lapsv.cli``: the ``lapsv`` command."""

import sys

from lapsv.cli import main

sys.exit(main())
