"""Configuration: typed sections, layered loading, validation, redaction."""

from __future__ import annotations

from cortexd.config.loader import LoadedConfig, load_config
from cortexd.config.schema import (
    Config,
    InferenceConfig,
    LoggingConfig,
    MonitorConfig,
    ServerConfig,
)
from cortexd.config.view import as_dict, redacted, restart_required

__all__ = [
    "Config",
    "InferenceConfig",
    "LoadedConfig",
    "LoggingConfig",
    "MonitorConfig",
    "ServerConfig",
    "as_dict",
    "load_config",
    "redacted",
    "restart_required",
]
