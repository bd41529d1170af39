"""Repair: fixes with a dry-run plan, applied on request or (when safe) by themselves."""

from cortexd.host.systemd import HostLayout
from cortexd.repair.manager import FixVetoed, RepairManager
from cortexd.repair.model import Fix, Outcome, Plan, Step, StepResult
from cortexd.repair.runner import FixRunner

__all__ = [
    "Fix",
    "FixRunner",
    "FixVetoed",
    "HostLayout",
    "Outcome",
    "Plan",
    "RepairManager",
    "Step",
    "StepResult",
]
