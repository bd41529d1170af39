"""`python -m cortexctl` runs the command-line client."""

from __future__ import annotations

import sys

from cortexctl.cli import main

sys.exit(main())
