"""Builds the check instances from the config: defaults, then per-check settings."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from cortexd.config.schema import CheckSettings, Config
from cortexd.host.commands import CommandRunner, Runner
from cortexd.host.packages import reboot_flag_path
from cortexd.host.pending import PendingUpdates
from cortexd.monitor.check import Check
from cortexd.monitor.checks import disk, metrics, packages, system

log = logging.getLogger(__name__)

Factory = Callable[[CheckSettings], Check]

# Checks that run at the original daemon's monitoring interval
# (`monitor.interval_seconds`, seed key `monitoring_interval_seconds`) unless
# their own `interval_seconds` is set; fast metrics and package scans keep
# their own cadence.
FOLLOW_MONITOR_INTERVAL = frozenset(
    {"apt_status", "time_sync", "dns_resolution", "network_connectivity", "reboot_required"}
)


def _factories(runner: CommandRunner, pending: PendingUpdates) -> dict[str, Factory]:
    """Check id → how to build it from its settings, in the order `doctor` lists them.

    The command checks share one runner (so stopping the monitor ends all of
    their child processes) and the two update checks the daemon's one
    `PendingUpdates`.
    """
    return {
        "cpu_usage": lambda s: metrics.CpuUsage(),
        "cpu_load": lambda s: metrics.CpuLoad(),
        "memory": lambda s: metrics.Memory(),
        "swap_usage": lambda s: metrics.SwapUsage(),
        "disk_space": lambda s: disk.DiskSpace(include=s.include, exclude=s.exclude),
        "file_descriptors": lambda s: metrics.FileDescriptors(),
        "zombie_processes": lambda s: metrics.ZombieProcesses(),
        "process_count": lambda s: metrics.ProcessCount(),
        "systemd_failed": lambda s: system.SystemdFailed(runner),
        "apt_status": lambda s: packages.AptStatus(runner),
        "apt_updates": lambda s: packages.AptUpdates(pending),
        "security_updates": lambda s: packages.SecurityUpdates(pending),
        "cve_scan": lambda s: packages.CveScan(data_path=s.data_path, runner=runner),
        "dependency_conflicts": lambda s: packages.DependencyConflicts(runner),
        "time_sync": lambda s: system.TimeSync(),
        "dns_resolution": lambda s: system.DnsResolution(
            s.targets if s.targets is not None else system.DEFAULT_DNS_NAMES
        ),
        "network_connectivity": lambda s: system.NetworkConnectivity(
            s.targets if s.targets is not None else system.DEFAULT_TARGETS
        ),
        "reboot_required": lambda s: system.RebootRequired(reboot_flag_path(s)),
    }


def pending_updates(config: Config, runner: Runner) -> PendingUpdates:
    """The daemon's one upgrade simulation, with the apt settings of `updates`."""
    return PendingUpdates(
        runner,
        apt_command=config.updates.apt_command,
        lists_dir=config.updates.apt_lists_dir,
        dpkg_status=config.updates.dpkg_status_path,
    )


def build_checks(config: Config, pending: PendingUpdates | None = None) -> list[Check]:
    """Every built-in check with its configured interval, timeout and thresholds.

    `pending` is the daemon's shared simulation (a new one when not given).
    """
    runner = CommandRunner()
    pending = pending or pending_updates(config, runner)
    checks: list[Check] = []
    for check_id, factory in _factories(runner, pending).items():
        settings: CheckSettings = getattr(config.checks, check_id)
        check = factory(settings)
        if check_id in FOLLOW_MONITOR_INTERVAL:
            check.interval = config.monitor.interval_seconds
        apply_settings(check, settings)
        if check_id == "cve_scan" and not config.monitor.enable_cve_scanning:
            check.enabled = False
        # The factories read nothing but `settings`; what apply_settings sets
        # changes in place on reload.
        check.built_from = _built_from(settings)
        checks.append(check)
    return checks


def _built_from(settings: CheckSettings) -> CheckSettings:
    """`settings` without what apply_settings sets: the part a reload must rebuild for."""
    return dataclasses.replace(
        settings,
        enabled=True,
        interval_seconds=None,
        timeout_seconds=None,
        warning=None,
        warning_clear=None,
        critical=None,
        critical_clear=None,
        samples=None,
    )


def apply_settings(check: Check, settings: CheckSettings) -> None:
    """Put one check's configured settings on the instance.

    Thresholds that contradict each other (a clear level above its raise
    level) are logged and the check keeps its defaults.
    """
    check.enabled = settings.enabled
    if settings.interval_seconds is not None:
        check.interval = settings.interval_seconds
    if settings.timeout_seconds is not None:
        check.timeout = settings.timeout_seconds
    if check.thresholds is not None:
        wanted = check.thresholds.override(
            warning=settings.warning,
            warning_clear=settings.warning_clear,
            critical=settings.critical,
            critical_clear=settings.critical_clear,
            samples=settings.samples,
        )
        problems = wanted.problems()
        if problems:
            log.error("checks.%s: %s; keeping the defaults", check.id, "; ".join(problems))
        else:
            check.thresholds = wanted
