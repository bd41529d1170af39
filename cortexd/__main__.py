"""`python -m cortexd` runs the daemon."""

from __future__ import annotations

import sys

from cortexd.main import main

sys.exit(main())
