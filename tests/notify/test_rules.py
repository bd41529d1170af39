"""Rules files: the example loads, bad ones are rejected naming the rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cortexd.alerts.model import Alert, Severity
from cortexd.config.view import REDACTED, redact
from cortexd.notify.rules import load_rules, parse_rules
from cortexd.protocol import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "alerts.yaml"


def alert(source: str = "disk_space", severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(
        id="a1",
        fingerprint="f1",
        source=source,
        severity=severity,
        category="disk_usage",
        title="Disk space",
        description="",
        labels={"check": source, "mountpoint": "/"},
        annotations={},
        state="firing",
        first_seen=1.0,
        last_seen=1.0,
        count=1,
        host="web1",
    )


def test_the_example_rules_load_and_route_a_full_disk() -> None:
    rules = load_rules(str(EXAMPLE))
    names = {a.name for a in rules.actions_for(alert())}
    assert names == {
        "disk-critical.webhook",
        "disk-critical.email",
        "disk-critical.alertmanager",
    }
    # A warning about the same disk is not a `status: fail` match.
    assert rules.actions_for(alert(severity=Severity.WARNING)) == []


def test_a_missing_file_means_no_rules(tmp_path: Path) -> None:
    assert load_rules(str(tmp_path / "none.yaml")).rules == ()


def test_conditions_all_have_to_hold() -> None:
    rules = parse_rules(
        {
            "alerts": [
                {
                    "name": "root",
                    "severity": "error",
                    "labels": {"mountpoint": "/", "instance": "web1"},
                    "actions": [{"type": "webhook", "url": "http://127.0.0.1:1/x"}],
                }
            ]
        }
    )
    assert [a.name for a in rules.actions_for(alert())] == ["root.webhook"]
    assert rules.actions_for(alert(severity=Severity.WARNING)) == []
    other = alert()
    other.labels["mountpoint"] = "/srv"
    assert rules.actions_for(other) == []


def problems(data: object, tmp_path: Path) -> list[str]:
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_rules(str(path))
    return caught.value.errors


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"name": "disk", "actions": [{"type": "webhook"}]},
            "rule 'disk': field 'actions[0].url': required for a webhook action",
        ),
        (
            {"name": "disk", "actions": [{"type": "sms", "to": "1"}]},
            "rule 'disk': field 'actions[0].type': must be one of",
        ),
        (
            {"name": "disk", "status": "broken", "actions": [{"type": "slack", "url": "x"}]},
            "rule 'disk': field 'status': must be one of warn, fail",
        ),
        (
            {"name": "disk", "actions": [{"type": "slack", "url": "ftp://h/x"}]},
            "rule 'disk': field 'actions[0].url': must be an http:// or https:// URL",
        ),
        (
            {"name": "mail", "actions": [{"type": "email", "to": "not-an-address"}]},
            "rule 'mail': field 'actions[0].to': must be an address or a list of addresses",
        ),
        (
            {"name": "mail", "actions": [{"type": "email", "to": "a@b.c", "smtp_port": 0}]},
            "rule 'mail': field 'actions[0].smtp_port': must be a port number",
        ),
        (
            {"name": "pd", "actions": [{"type": "pagerduty"}]},
            "rule 'pd': field 'actions[0].routing_key': required for a pagerduty action",
        ),
        (
            {"name": "x", "severity": "loud", "actions": [{"type": "discord", "url": "http://h/"}]},
            "rule 'x': field 'severity': unknown severity 'loud'",
        ),
        ({"name": "x"}, "rule 'x': field 'actions': required"),
        (
            {"name": "x", "colour": "red", "actions": [{"type": "discord", "url": "http://h/"}]},
            "rule 'x': field 'colour': unknown field",
        ),
        ({"actions": []}, "alerts[0]: field 'name': required"),
    ],
)
def test_invalid_rules_are_rejected_naming_rule_and_field(
    rule: dict[str, object], expected: str, tmp_path: Path
) -> None:
    found = problems({"alerts": [rule]}, tmp_path)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        {
            "alerts": [
                {"name": "a", "actions": [{"type": "webhook"}]},
                {"name": "a", "actions": [{"type": "slack"}]},
            ]
        },
        tmp_path,
    )
    assert len(found) == 3, found
    assert any("rule 'a': field 'name': used by another rule" in p for p in found)


def test_unparseable_yaml_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("alerts: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(str(path))


def test_secrets_of_actions_are_redacted_by_config_get_rules() -> None:
    """config.get's redaction covers every secret an action can hold."""
    shown = redact(yaml.safe_load(EXAMPLE.read_text()) | {"extra": {"smtp_password": "pw"}})
    text = repr(shown)
    assert "change-me" not in text
    assert "XXXXXXXXXXXXXXXXXXXXXXXX" not in text  # the Slack token in the URL path
    assert shown["extra"]["smtp_password"] == REDACTED
    pd = redact({"a": {"routing_key": "0123", "hmac_secret": "k", "password": "p"}})
    assert pd["a"] == {"routing_key": REDACTED, "hmac_secret": REDACTED, "password": REDACTED}
    discord = redact({"url": "https://discord.com/api/webhooks/1/TOKEN"})
    assert "TOKEN" not in discord["url"]


def test_a_missing_ca_file_is_rejected(tmp_path: Path) -> None:
    action = {"type": "webhook", "url": "https://h/x", "ca_file": str(tmp_path / "none.pem")}
    found = problems({"alerts": [{"name": "w", "actions": [action]}]}, tmp_path)
    assert any("rule 'w': field 'actions[0].ca_file': no such file" in p for p in found), found


def test_repeat_interval_is_a_duration_per_rule() -> None:
    def rule(**extra: object) -> dict[str, object]:
        actions = [{"type": "webhook", "url": "http://h/"}]
        return {"alerts": [{"name": "r", "actions": actions, **extra}]}

    assert parse_rules(rule()).actions["r.webhook"].repeat_interval == 4 * 3600
    assert parse_rules(rule(repeat_interval="30m")).actions["r.webhook"].repeat_interval == 1800
    assert parse_rules(rule(repeat_interval=90)).actions["r.webhook"].repeat_interval == 90
    assert parse_rules(rule(repeat_interval=0)).actions["r.webhook"].repeat_interval == 0
    for bad in ("soon", -5, True, "2y", 400 * 86400, [1]):
        with pytest.raises(ConfigError) as caught:
            parse_rules(rule(repeat_interval=bad))
        assert "rule 'r': field 'repeat_interval': must be a duration" in caught.value.errors[0]
