import sys

from ._cassandra import main

sys.exit(main())
