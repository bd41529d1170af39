"""Where each capability plugs into the daemon: one call per feature.

A feature builds its components from the config, adds them to
`daemon.components` (started in order, stopped in reverse) and registers its
socket methods with `daemon.registry.add(...)`. Nothing else in the root
knows what a feature does. Features see the daemon only as a
`cortexd.runtime.Runtime`; what one needs from another is an argument here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cortexd.store import Stores

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from prometheus_client.registry import Collector

    from cortexd.config.restore import Target
    from cortexd.healing.loop import Healer
    from cortexd.plugins.manager import PluginManager
    from cortexd.repair.manager import RepairManager
    from cortexd.runtime import Runtime


# Every module `install_features` imports. The daemon imports them in a
# worker thread after READY=1: they are most of its start-up time. What
# `restorable_config` imports loads with the first backup or update snapshot,
# in the worker thread that makes it.
FEATURE_MODULES = (
    "cortexd.alerts.methods",
    "cortexd.inference.methods",
    "cortexd.notify.methods",
    "cortexd.monitor.methods",
    "cortexd.repair.methods",
    "cortexd.healing.methods",
    "cortexd.plugins.methods",
    "cortexd.logs.methods",
    "cortexd.backup.methods",
    "cortexd.updates.methods",
    "cortexd.explain.methods",
    "cortexd.explain.auto",
    "cortexd.metrics.methods",
)


def import_features() -> None:
    """Import what `install_features` needs (blocking: run it in a worker thread)."""
    for name in FEATURE_MODULES:
        importlib.import_module(name)


def install_features(daemon: Runtime, config_sources: Callable[[], Sequence[str]]) -> None:
    """Build and register every optional capability for `daemon`.

    `config_sources` names the config files the running config came from
    (what restore and rollback may write back).

    Order matters where one feature feeds another: alerts before what raises
    them, and metrics last, reading every other component at scrape time.
    """
    from cortexd.alerts.methods import install as install_alerts
    from cortexd.backup.methods import install as install_backup
    from cortexd.explain.auto import AutoExplainer
    from cortexd.explain.methods import install as install_explain
    from cortexd.healing.methods import install as install_healing
    from cortexd.inference.methods import install as install_inference
    from cortexd.logs.methods import install as install_logs
    from cortexd.metrics.methods import install as install_metrics
    from cortexd.monitor.methods import install as install_monitor
    from cortexd.notify.methods import install as install_notify
    from cortexd.plugins.methods import install as install_plugins
    from cortexd.repair.methods import install as install_repair
    from cortexd.updates.methods import install as install_updates

    stores = Stores()
    alerts = install_alerts(daemon)
    # The alert manager keeps its open alerts in memory: a restore stops it
    # and opens it again, which reloads them from the restored file.
    stores.add(alerts.db, release=alerts.stop, resume=alerts.open)
    engine = install_inference(daemon, alerts)
    notifier = install_notify(daemon, alerts)
    stores.add(notifier.db)
    monitor = install_monitor(daemon, alerts)
    repair = install_repair(daemon, monitor, alerts)
    stores.add(repair.db)
    healer = install_healing(daemon, alerts, repair)
    plugins = install_plugins(daemon, monitor, repair.hooks, notifier.action_types)
    install_logs(daemon, alerts)

    def config_targets() -> list[Target]:
        return restorable_config(daemon, config_sources(), plugins)

    install_backup(daemon, config_targets, stores)
    updates = install_updates(daemon, alerts, config_targets, stores, monitor.pending)
    explainer = install_explain(
        daemon, alerts=alerts, health=monitor, engine=engine, fixes=repair, plugins=plugins
    )
    auto_explain = AutoExplainer(daemon.config, explainer, engine, alerts)
    daemon.components.append(auto_explain)
    alerts.listeners.append(auto_explain.on_alert)
    alerts.details.append(auto_explain.detail)
    notifier.include_explanations(auto_explain.text_for)
    install_metrics(
        daemon,
        monitor=monitor,
        alerts=alerts,
        notifier=notifier,
        updates=updates,
        engine=engine,
        collectors=[lambda: _repair_collector(repair, healer)],
    )


def restorable_config(
    daemon: Runtime, sources: Sequence[str], plugins: PluginManager
) -> list[Target]:
    """What restore and update rollback may write back: the loaded config, the rules,
    the plugins (loaded again after a restore, unless plugins are disabled)."""
    from cortexd.config.plugintree import PluginTree
    from cortexd.config.restore import ConfigTarget, config_targets
    from cortexd.notify.rootonly import check_rules_file, root_only_options

    rules = ConfigTarget(
        daemon.config.notify.rules_path,
        root_only_options,
        always_secret=True,
        validate=check_rules_file,
    )
    reload = plugins.reload if daemon.config.plugins.enabled else None
    tree = PluginTree(daemon.config.plugins.directory, reload)
    return config_targets(sources, [rules], tree)


def _repair_collector(repair: RepairManager, healer: Healer) -> Collector:
    """Repair's and self-healing's figures, made when the metrics registry is (first scrape)."""
    from cortexd.healing.metrics import RepairCollector

    return RepairCollector(repair, healer)
