"""What `config.get` shows (secrets redacted) and what a reload may change live."""

from __future__ import annotations

import dataclasses

from cortexd.config import (
    Config,
    InferenceConfig,
    ServerConfig,
    as_dict,
    is_secret_key,
    keep_running_values,
    redact,
    redacted,
    restart_required,
)
from cortexd.config.view import REDACTED


def test_secret_keys_are_redacted_whatever_their_value() -> None:
    shown = redact(
        {
            "notify": {
                "email": {"smtp_password": "hunter2", "user": "ops", "port": 587},
                "pagerduty": {"routing_key": "R0UT1NG"},
                "webhook": {
                    "hmac_key": "k",
                    "auth_token": "t",
                    "headers": {"Authorization": "Bearer x"},
                },
                "numeric": {"api_key": 12345},
            }
        }
    )["notify"]
    assert shown["email"] == {"smtp_password": REDACTED, "user": "ops", "port": 587}
    assert shown["pagerduty"]["routing_key"] == REDACTED
    assert shown["webhook"]["hmac_key"] == REDACTED
    assert shown["webhook"]["auth_token"] == REDACTED
    assert shown["webhook"]["headers"]["Authorization"] == REDACTED
    assert shown["numeric"]["api_key"] == REDACTED


def test_keys_that_only_contain_a_secret_word_are_not_secrets() -> None:
    assert not is_secret_key("max_tokens")
    assert not is_secret_key("tokens_per_second")
    assert not is_secret_key("keep_alive")
    assert is_secret_key("token")
    assert is_secret_key("smtpPassword")
    assert is_secret_key("routingKey")


def test_empty_and_boolean_values_stay_visible() -> None:
    shown = redact({"password": "", "use_token": True, "token": None})
    assert shown == {"password": "", "use_token": True, "token": None}


def test_urls_lose_user_info_and_query_anywhere() -> None:
    shown = redact(
        {
            "alertmanager": {"url": "https://ops:s3cret@am.example:9093/api/v2/alerts?key=abc"},
            "http": {"proxy": "http://[::1]:3128/"},
        }
    )
    url = shown["alertmanager"]["url"]
    assert "ops" not in url and "s3cret" not in url and "abc" not in url
    assert url == f"https://{REDACTED}@am.example:9093/api/v2/alerts?{REDACTED}"
    assert shown["http"]["proxy"] == "http://[::1]:3128/"


def test_webhook_paths_are_hidden() -> None:
    shown = redact(
        {
            "notify": {
                "slack": {"url": "https://hooks.slack.com/services/T000/B000/XXXXSECRET"},
                "webhooks": ["https://example.org/hook/abcdef123"],
                "discord_url": "https://discord.com/api/webhooks/1/TOKEN",
                "generic": {"url": "https://discord.com/api/webhooks/2/TOKEN2"},
            }
        }
    )["notify"]
    assert shown["slack"]["url"] == f"https://hooks.slack.com/{REDACTED}"
    assert shown["webhooks"] == [f"https://example.org/{REDACTED}"]
    assert "TOKEN" not in shown["discord_url"]
    assert "TOKEN2" not in shown["generic"]["url"]  # known webhook host, whatever the key


def test_redacted_config_is_the_whole_config() -> None:
    config = Config()
    assert redacted(config).keys() == as_dict(config).keys()
    assert redacted(config)["server"]["socket_path"] == config.server.socket_path


def test_restart_required_lists_only_restart_settings_that_changed() -> None:
    old = Config()
    new = dataclasses.replace(
        old,
        server=dataclasses.replace(old.server, socket_path="/run/other.sock", request_timeout=1.0),
        inference=dataclasses.replace(old.inference, n_ctx=4096, queue_depth=5),
        state_dir="/srv/elsewhere",
    )
    assert sorted(restart_required(old, new)) == [
        "inference.n_ctx",
        "server.socket_path",
        "state_dir",
    ]
    assert restart_required(old, old) == []


def test_keep_running_values_holds_back_only_the_listed_keys() -> None:
    running = Config(server=ServerConfig(socket_path="/run/a.sock"))
    loaded = Config(
        server=ServerConfig(socket_path="/run/b.sock", request_timeout=1.0),
        inference=InferenceConfig(n_ctx=4096),
    )
    kept = keep_running_values(running, loaded, ["server.socket_path", "inference.n_ctx"])
    assert kept.server.socket_path == "/run/a.sock"
    assert kept.server.request_timeout == 1.0
    assert kept.inference.n_ctx == running.inference.n_ctx
