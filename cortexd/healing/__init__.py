"""Self-healing: restart failed units with backoff, limits, verification and a log."""

from cortexd.healing.loop import Healer, UnitState, unit_name

__all__ = ["Healer", "UnitState", "unit_name"]
