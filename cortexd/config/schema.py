"""The typed, frozen configuration: one dataclass per section.

Field metadata carries validation bounds (`min`, `max`), whether a change
needs a restart (`restart`), and whether the key names something root
executes, loads or reads (`root_only`): such keys change only by root editing
the file, never through a socket method. The loader reads these; nothing
else keeps a parallel table of keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from cortexd.protocol import default_socket_path

LogLevel = Literal["DEBUG", "INFO", "WARN", "ERROR"]
LogTarget = Literal["auto", "journal", "stderr"]
BackupSchedule = Literal["off", "daily"]


def _bound(
    lo: float | None = None,
    hi: float | None = None,
    *,
    restart: bool = False,
    root_only: bool = False,
) -> dict[str, Any]:
    return {"min": lo, "max": hi, "restart": restart, "root_only": root_only}


def _root_only(*, restart: bool = False) -> dict[str, Any]:
    """Metadata of a key that names a program, code or a file root reads."""
    return _bound(restart=restart, root_only=True)


def _check_channel(value: str) -> str | None:
    """`updates.channel`: empty, an absolute path, a file:/// URL or an https:// URL."""
    if not value or value.startswith("/"):
        return None
    scheme, _, rest = value.partition("://")
    if scheme == "file" and rest.startswith("/"):
        return None
    if scheme == "https" and rest and not rest.startswith("/"):
        return None
    # Shown only up to the scheme when it could carry a password or token.
    shown = f"{scheme}://…" if "@" in value or "?" in value else value
    return f"must be a file:///path or https://host/… URL (or an absolute path), got {shown!r}"


def default_state_dir() -> str:
    """State lives in systemd's StateDirectory, /var/lib/cortex for root, else XDG state."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        # systemd may pass several colon-separated directories; ours is the first.
        return from_systemd.split(":")[0]
    if os.getuid() == 0:
        return "/var/lib/cortex"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(xdg, "cortex")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # Who may connect and who is an admin: root decides, never a socket caller.
    socket_path: str = field(default_factory=default_socket_path, metadata=_root_only(restart=True))
    socket_group: str = field(default="cortex", metadata=_root_only(restart=True))
    admin_group: str = field(default="cortex-admin", metadata=_root_only())
    max_request_bytes: int = field(default=65536, metadata=_bound(256, 16 * 1024 * 1024))
    request_timeout: float = field(default=5.0, metadata=_bound(0.01, 3600))
    idle_timeout: float = field(default=300.0, metadata=_bound(0.1, 86400))
    write_timeout: float = field(default=10.0, metadata=_bound(0.1, 3600))
    max_connections: int = field(default=1024, metadata=_bound(1, 65536, restart=True))
    max_inflight_per_connection: int = field(default=64, metadata=_bound(1, 4096))
    shutdown_timeout: float = field(default=10.0, metadata=_bound(0.0, 600))
    max_batch_members: int = field(default=100, metadata=_bound(1, 10000))
    # 0: a quarter of max_connections. Admins (and root) are not limited per user.
    max_connections_per_user: int = field(default=0, metadata=_bound(0, 65536))
    # Kept for root and admins: a user holding connections cannot stop `shutdown`.
    reserved_connections: int = field(default=8, metadata=_bound(0, 1024))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "INFO"
    # Reload re-applies only the level; the handler is chosen once at start.
    target: LogTarget = field(default="auto", metadata=_bound(restart=True))


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    interval_seconds: float = field(default=300.0, metadata=_bound(1, 86400))
    enable_cve_scanning: bool = True


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    model_path: str = field(default="", metadata=_root_only(restart=True))
    n_ctx: int = field(default=2048, metadata=_bound(16, 1 << 20, restart=True))
    n_threads: int = field(default=0, metadata=_bound(0, 1024, restart=True))
    n_batch: int = field(default=512, metadata=_bound(1, 1 << 16, restart=True))
    use_mmap: bool = field(default=True, metadata=_bound(restart=True))
    queue_depth: int = field(default=100, metadata=_bound(1, 100000))
    request_timeout: float = field(default=120.0, metadata=_bound(0.1, 86400))
    keep_alive: float = field(default=0.0, metadata=_bound(0, 86400 * 365))
    # The runner process, its bounds and who may load what (docs/config.md).
    model_dirs: tuple[str, ...] = field(default=(), metadata=_root_only())
    max_queued_per_user: int = field(default=0, metadata=_bound(0, 100000))
    reserved_admin_slots: int = field(default=2, metadata=_bound(0, 100000))
    allow_ctx_beyond_train: bool = False
    memory_limit_mb: int = field(default=0, metadata=_bound(0, 1 << 24))
    nice: int = field(default=10, metadata=_bound(0, 19))
    max_load_failures: int = field(default=3, metadata=_bound(1, 1000))
    restart_backoff_seconds: float = field(default=1.0, metadata=_bound(0.01, 3600))
    restart_backoff_max_seconds: float = field(default=60.0, metadata=_bound(0.01, 86400))
    # Explain each new CRITICAL alert in the background lane and store it with the alert.
    auto_explain: bool = False
    auto_explain_per_hour: int = field(default=6, metadata=_bound(1, 3600))


@dataclass(frozen=True, slots=True)
class DoctorConfig:
    max_parallel: int = field(default=4, metadata=_bound(1, 64, restart=True))
    timeout_seconds: float = field(default=30.0, metadata=_bound(0.1, 3600))
    # A reader's checks.run re-runs a check at most this often; else its last result.
    force_interval: float = field(default=60.0, metadata=_bound(0, 86400))


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    max_active: int = field(default=1000, metadata=_bound(1, 1_000_000))
    retention_days: float = field(default=30.0, metadata=_bound(0.01, 3650))
    history_max: int = field(default=100_000, metadata=_bound(1, 10_000_000))
    coalesce_seconds: float = field(default=60.0, metadata=_bound(0, 86400))
    reopen_window_seconds: float = field(default=300.0, metadata=_bound(0, 86400))
    max_silence_seconds: float = field(default=90 * 86400.0, metadata=_bound(60, 3650 * 86400))
    flap_window_seconds: float = field(default=900.0, metadata=_bound(0.01, 86400))
    flap_high_changes: int = field(default=6, metadata=_bound(0, 64))
    flap_low_changes: int = field(default=3, metadata=_bound(1, 64))
    event_ttl_seconds: float = field(default=3600.0, metadata=_bound(1, 365 * 86400))


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    rules_path: str = field(default="/etc/cortex/alerts.yaml", metadata=_root_only())
    instance: str = ""
    cooldown_seconds: float = field(default=300.0, metadata=_bound(0, 7 * 86400))
    rate_limit_per_minute: int = field(default=30, metadata=_bound(1, 100_000))
    max_attempts: int = field(default=5, metadata=_bound(1, 100))
    backoff_seconds: float = field(default=5.0, metadata=_bound(0.001, 3600))
    backoff_max_seconds: float = field(default=600.0, metadata=_bound(0.001, 86400))
    attempt_timeout_seconds: float = field(default=10.0, metadata=_bound(0.1, 600))
    max_concurrent: int = field(default=8, metadata=_bound(1, 256, restart=True))
    max_pending: int = field(default=10_000, metadata=_bound(1, 10_000_000))
    alertmanager_resend_seconds: float = field(default=60.0, metadata=_bound(1, 86400))
    daily_summary: bool = False
    daily_summary_time: str = "06:00"
    history_days: float = field(default=7.0, metadata=_bound(0.01, 3650))
    deadletter_retention_days: float = field(default=30.0, metadata=_bound(0.01, 3650))
    evaluation_interval_seconds: float = field(default=10.0, metadata=_bound(0.01, 3600))
    external_url: str = ""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    http_enabled: bool = field(default=False, metadata=_bound(restart=True))
    http_host: str = field(default="127.0.0.1", metadata=_bound(restart=True))
    http_port: int = field(default=9109, metadata=_bound(1, 65535, restart=True))
    textfile_path: str = field(default="", metadata=_root_only())
    textfile_interval_seconds: float = field(default=60.0, metadata=_bound(1, 86400))


@dataclass(frozen=True, slots=True)
class RepairConfig:
    auto_fix_safe: bool = False
    command_timeout: float = field(default=900.0, metadata=_bound(1, 7200))
    journal_max_size: str = "500M"
    root: str = field(default="/", metadata=_root_only())
    config_dir: str = field(default="/etc/cortex", metadata=_root_only())
    runtime_dir: str = field(default="/run/cortex", metadata=_root_only())


@dataclass(frozen=True, slots=True)
class HealingConfig:
    enabled: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_attempts: int = field(default=3, metadata=_bound(1, 100))
    window_seconds: float = field(default=3600.0, metadata=_bound(1, 7 * 86400))
    backoff_seconds: float = field(default=10.0, metadata=_bound(0, 3600))
    backoff_max_seconds: float = field(default=300.0, metadata=_bound(0, 86400))
    settle_seconds: float = field(default=15.0, metadata=_bound(0, 3600))
    verify_timeout_seconds: float = field(default=60.0, metadata=_bound(0.1, 3600))
    max_concurrent: int = field(default=2, metadata=_bound(1, 64))
    poll_seconds: float = field(default=30.0, metadata=_bound(0.1, 3600))


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    enabled: bool = True
    directory: str = field(default="/etc/cortex/plugins", metadata=_root_only())
    timeout_seconds: float = field(default=10.0, metadata=_bound(0.1, 600))


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """One check's settings; unset (null) values take the check's built-in default."""

    enabled: bool = True
    interval_seconds: float | None = field(default=None, metadata=_bound(0.1, 7 * 86400))
    timeout_seconds: float | None = field(default=None, metadata=_bound(0.1, 3600))
    warning: float | None = None
    warning_clear: float | None = None
    critical: float | None = None
    critical_clear: float | None = None
    samples: int | None = field(default=None, metadata=_bound(1, 1000))
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None
    data_path: str = field(default="", metadata=_root_only())


@dataclass(frozen=True, slots=True)
class ChecksConfig:
    cpu_usage: CheckSettings = field(default_factory=CheckSettings)
    cpu_load: CheckSettings = field(default_factory=CheckSettings)
    memory: CheckSettings = field(default_factory=CheckSettings)
    swap_usage: CheckSettings = field(default_factory=CheckSettings)
    disk_space: CheckSettings = field(default_factory=CheckSettings)
    file_descriptors: CheckSettings = field(default_factory=CheckSettings)
    zombie_processes: CheckSettings = field(default_factory=CheckSettings)
    process_count: CheckSettings = field(default_factory=CheckSettings)
    systemd_failed: CheckSettings = field(default_factory=CheckSettings)
    apt_status: CheckSettings = field(default_factory=CheckSettings)
    apt_updates: CheckSettings = field(default_factory=CheckSettings)
    security_updates: CheckSettings = field(default_factory=CheckSettings)
    cve_scan: CheckSettings = field(default_factory=CheckSettings)
    dependency_conflicts: CheckSettings = field(default_factory=CheckSettings)
    time_sync: CheckSettings = field(default_factory=CheckSettings)
    dns_resolution: CheckSettings = field(default_factory=CheckSettings)
    network_connectivity: CheckSettings = field(default_factory=CheckSettings)
    reboot_required: CheckSettings = field(default_factory=CheckSettings)
    apt_locks: CheckSettings = field(default_factory=CheckSettings)
    cortex_world_writable: CheckSettings = field(default_factory=CheckSettings)
    cortex_permissions: CheckSettings = field(default_factory=CheckSettings)
    cortex_databases: CheckSettings = field(default_factory=CheckSettings)


@dataclass(frozen=True, slots=True)
class LogsConfig:
    watch: bool = True
    poll_seconds: float = field(default=5.0, metadata=_bound(0.1, 3600))
    alert_interval_seconds: float = field(default=300.0, metadata=_bound(0, 86400))
    builtin_patterns: bool = True
    patterns: tuple[str, ...] = ()
    max_entries: int = field(default=100_000, metadata=_bound(1, 10_000_000))


@dataclass(frozen=True, slots=True)
class UpdatesConfig:
    check_interval_hours: float = field(default=24.0, metadata=_bound(0.0, 720))
    rollback_retention_days: float = field(default=7.0, metadata=_bound(0.01, 3650))
    backup_before_update: bool = True
    apply_timeout_seconds: float = field(default=3600.0, metadata=_bound(10, 86400))
    apt_command: tuple[str, ...] = field(default=("apt-get",), metadata=_root_only())
    apt_lists_dir: str = field(default="/var/lib/apt/lists", metadata=_root_only())
    dpkg_status_path: str = field(default="/var/lib/dpkg/status", metadata=_root_only())
    # A reader's forced check refreshes the package lists (as root) at most this often.
    force_interval: float = field(default=300.0, metadata=_bound(0, 86400))
    channel: str = field(default="", metadata={**_root_only(), "check": _check_channel})
    ca_file: str = field(default="", metadata=_root_only())


@dataclass(frozen=True, slots=True)
class BackupConfig:
    schedule: BackupSchedule = "off"
    retention_days: float = field(default=30.0, metadata=_bound(0.01, 3650))
    max_archive_bytes: int = field(default=1 << 30, metadata=_bound(4096, 1 << 40))
    upkeep_interval_hours: float = field(default=24.0, metadata=_bound(0.0, 8760))
    vacuum_interval_days: float = field(default=7.0, metadata=_bound(0.0, 3650))
    # 0: four times the present state (databases and configuration), at least 256 MiB.
    max_restore_bytes: int = field(default=0, metadata=_bound(0, 1 << 40))
    upload_idle_seconds: float = field(default=600.0, metadata=_bound(1, 86400))


@dataclass(frozen=True, slots=True)
class ExplainConfig:
    max_tokens: int = field(default=160, metadata=_bound(1, 4096))
    facts_timeout_seconds: float = field(default=3.0, metadata=_bound(0.1, 60))


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon is configured with; built once per load, never mutated."""

    state_dir: str = field(default_factory=default_state_dir, metadata=_root_only(restart=True))
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    healing: HealingConfig = field(default_factory=HealingConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "logging": LoggingConfig,
    "monitor": MonitorConfig,
    "inference": InferenceConfig,
    "doctor": DoctorConfig,
    "alerts": AlertsConfig,
    "notify": NotifyConfig,
    "metrics": MetricsConfig,
    "checks": ChecksConfig,
    "repair": RepairConfig,
    "healing": HealingConfig,
    "plugins": PluginsConfig,
    "logs": LogsConfig,
    "updates": UpdatesConfig,
    "backup": BackupConfig,
    "explain": ExplainConfig,
}

# Sections that later capabilities own; accepted without a warning so a config
# file written for a newer daemon still loads.
RESERVED_SECTIONS = frozenset({"http"})
