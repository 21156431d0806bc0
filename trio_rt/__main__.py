"""``python -m trio_rt`` is the ``trio-rt`` command."""

import sys

from ._cli import main

sys.exit(main())
