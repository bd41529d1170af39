"""cortexd — host health, alerting, repair and local inference daemon.

Importing this package must stay cheap: `cortexctl` imports `cortexd.protocol`,
which pulls in this module, so nothing heavy is imported here.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
