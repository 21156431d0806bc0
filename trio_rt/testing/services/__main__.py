"""``python -m trio_rt.testing.services``: see :func:`trio_rt.testing.services.main`."""

import sys

from ._cli import main

sys.exit(main())
