"""``python -m lapsv``: the ``lapsv`` command (also under ``accelerate launch -m lapsv``)."""

import sys

from lapsv.cli import main

sys.exit(main())
