"""Configuration: typed sections, layered loading, validation, redaction."""

from __future__ import annotations

from cortexd.config.loader import (
    SYSTEM_CONFIG,
    ConfigFiles,
    LoadedConfig,
    load_config,
    user_config_path,
)
from cortexd.config.schema import (
    Config,
    InferenceConfig,
    LoggingConfig,
    MonitorConfig,
    ServerConfig,
)
from cortexd.config.view import (
    as_dict,
    is_secret_key,
    keep_running_values,
    redact,
    redacted,
    restart_required,
)

__all__ = [
    "SYSTEM_CONFIG",
    "Config",
    "ConfigFiles",
    "InferenceConfig",
    "LoadedConfig",
    "LoggingConfig",
    "MonitorConfig",
    "ServerConfig",
    "as_dict",
    "is_secret_key",
    "keep_running_values",
    "load_config",
    "redact",
    "redacted",
    "restart_required",
    "user_config_path",
]
