"""Where each capability plugs into the daemon: one call per feature.

A feature builds its components from the config, adds them to
`daemon.components` (started in order, stopped in reverse) and registers its
socket methods with `daemon.registry.add(...)`. Nothing else in the root
knows what a feature does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cortexd.app import Daemon


def install_features(daemon: Daemon) -> None:
    """Build and register every optional capability for `daemon`."""
    # Each capability adds one line here, e.g.:
    #   from cortexd.inference.methods import install as install_inference
    #   install_inference(daemon)
    from cortexd.inference.methods import install as install_inference

    install_inference(daemon)
    from cortexd.alerts.methods import install as install_alerts
    from cortexd.monitor.methods import install as install_monitor

    alerts = install_alerts(daemon)
    from cortexd.notify.methods import install as install_notify

    notifier = install_notify(daemon, alerts)
    monitor = install_monitor(daemon, alerts)
    from cortexd.repair.methods import install as install_repair

    repair = install_repair(daemon, monitor, alerts)
    from cortexd.healing.methods import install as install_healing

    install_healing(daemon, alerts, repair)
    from cortexd.plugins.methods import install as install_plugins

    install_plugins(daemon, monitor, repair.hooks, notifier.action_types)
    from cortexd.logs.methods import install as install_logs

    install_logs(daemon)
    from cortexd.metrics.methods import install as install_metrics

    install_metrics(daemon, monitor=monitor, alerts=alerts, notifier=notifier)
    from cortexd.backup.methods import install as install_backup

    install_backup(daemon)
    from cortexd.updates.methods import install as install_updates

    install_updates(daemon)
