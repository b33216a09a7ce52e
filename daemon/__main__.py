"""`python -m daemon` is the `pushguard` command."""

import sys

from daemon.cli import main

sys.exit(main())
