"""airflow_audit.settings and .provider: the [workflow_audit] section and the provider info."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_audit.provider import get_provider_info
from airflow_audit.settings import (
    OPTIONS,
    SECTION,
    AirflowAuditSettings,
    load_settings,
    provider_config,
)
from audit_core._normalize import DEFAULT_REDACT_KEYS
from audit_core.errors import ConfigError

HOME = "/opt/airflow"

Getter = Callable[[str, str, str], str]


def _airflow_conf(options: Mapping[str, str]) -> Getter:
    """A stand-in for Airflow's ``conf.get``: ``[workflow_audit]`` holds ``options``."""

    def get(section: str, key: str, fallback: str) -> str:
        return options.get(key, fallback) if SECTION == section else fallback

    return get


def _load(
    options: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> AirflowAuditSettings:
    return load_settings(get=_airflow_conf(options or {}), env=env or {}, home=HOME)


class TestLoadSettings:
    """load_settings(): Airflow option beats WORKFLOW_AUDIT_* variable beats Airflow default."""

    def test_defaults(self) -> None:
        """With nothing set: a ledger under $AIRFLOW_HOME, chain 'airflow', documented defaults."""
        settings = _load()
        assert "sqlite:////opt/airflow/workflow_audit/ledger.db" == settings.audit.ledger_url
        assert "airflow" == settings.audit.chain
        assert None is settings.audit.signing_key
        assert DEFAULT_REDACT_KEYS == settings.audit.redact_keys
        assert (True, 5.0, True, False) == (
            settings.enabled,
            settings.hook_timeout_s,
            settings.record_not_run,
            settings.record_conf,
        )
        assert "EventFilter('*')" == repr(settings.events)

    def test_environment_beats_defaults(self) -> None:
        """WORKFLOW_AUDIT_* variables fill options left empty in Airflow's configuration."""
        env = {
            "WORKFLOW_AUDIT_LEDGER": "sqlite:////env/ledger.db",
            "WORKFLOW_AUDIT_CHAIN": "env-chain",
            "WORKFLOW_AUDIT_SIGNING_KEY": "/env/key",
        }
        audit = _load(env=env).audit
        assert ("sqlite:////env/ledger.db", "env-chain", "/env/key") == (
            audit.ledger_url,
            audit.chain,
            audit.signing_key,
        )

    def test_airflow_option_beats_environment(self) -> None:
        """[workflow_audit] options win over WORKFLOW_AUDIT_* variables."""
        options = {
            "ledger_url": "sqlite:////cfg/ledger.db",
            "chain": "cfg-chain",
            "signing_key": "/cfg/key",
        }
        env = {
            "WORKFLOW_AUDIT_LEDGER": "sqlite:////env/ledger.db",
            "WORKFLOW_AUDIT_CHAIN": "env-chain",
            "WORKFLOW_AUDIT_SIGNING_KEY": "/env/key",
        }
        audit = _load(options, env).audit
        assert ("sqlite:////cfg/ledger.db", "cfg-chain", "/cfg/key") == (
            audit.ledger_url,
            audit.chain,
            audit.signing_key,
        )

    def test_blank_option_falls_through(self) -> None:
        """An option holding only whitespace counts as empty and falls through to the variable."""
        env = {"WORKFLOW_AUDIT_LEDGER": "sqlite:////env/ledger.db"}
        audit = _load({"ledger_url": "  ", "chain": " "}, env).audit
        assert ("sqlite:////env/ledger.db", "airflow") == (audit.ledger_url, audit.chain)

    def test_other_core_variables_still_apply(self) -> None:
        """Core variables without an Airflow option (actor, ...) are read from the environment."""
        audit = _load(env={"WORKFLOW_AUDIT_ACTOR": "service:airflow"}).audit
        assert ("service", "airflow") == audit.actor

    def test_redact_keys_are_appended(self) -> None:
        """redact_keys patterns are added after the built-in list and the variable's patterns."""
        settings = _load(
            {"redact_keys": "customer_email, iban,"}, {"WORKFLOW_AUDIT_REDACT_KEYS": "ssn"}
        )
        assert (*DEFAULT_REDACT_KEYS, "ssn", "customer_email", "iban") == (
            settings.audit.redact_keys
        )

    def test_hook_timeout_is_parsed(self) -> None:
        """hook_timeout is a number of seconds."""
        assert 2.5 == _load({"hook_timeout": " 2.5 "}).hook_timeout_s

    @pytest.mark.parametrize("text", ["soon", "", "0", "-1", "nan"])
    def test_bad_hook_timeout_raises(self, text: str) -> None:
        """A non-number or non-positive hook_timeout is a ConfigError naming the option."""
        with pytest.raises(ConfigError, match=r"\[workflow_audit\] hook_timeout"):
            _load({"hook_timeout": text})

    @pytest.mark.parametrize("text", ["inf", "1e12", "3601"])
    def test_unbounded_hook_timeout_raises(self, text: str) -> None:
        """A hook_timeout past an hour (or past threading.TIMEOUT_MAX) raises."""
        with pytest.raises(ConfigError, match=r"\[workflow_audit\] hook_timeout"):
            _load({"hook_timeout": text})

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("True", True), ("false", False), ("1", True), ("off", False), (" YES ", True)],
    )
    def test_booleans(self, text: str, expected: bool) -> None:
        """Boolean options accept Airflow's spellings of true and false, any case."""
        settings = _load({"enabled": text, "record_not_run": text, "record_conf": text})
        assert (expected, expected, expected) == (
            settings.enabled,
            settings.record_not_run,
            settings.record_conf,
        )

    @pytest.mark.parametrize("key", ["enabled", "record_not_run", "record_conf"])
    def test_bad_boolean_raises(self, key: str) -> None:
        """A boolean option that is neither true nor false is a ConfigError naming it."""
        with pytest.raises(ConfigError, match=rf"\[workflow_audit\] {key} .*'maybe'"):
            _load({key: "maybe"})

    def test_events_become_an_event_filter(self) -> None:
        """The events option is parsed into an EventFilter."""
        events = _load({"events": "task.*, !task.started"}).events
        assert "EventFilter('task.*,!task.started')" == repr(events)
        assert (True, False, False) == (
            events("task.failed"),
            events("task.started"),
            events("dagrun.started"),
        )

    def test_every_option_is_read_with_its_default(self) -> None:
        """Each OPTIONS key is read from [workflow_audit] with its documented default."""
        calls: dict[str, tuple[str, str]] = {}

        def get(section: str, key: str, fallback: str) -> str:
            calls[key] = (section, fallback)
            return fallback

        load_settings(get=get, env={}, home=HOME)
        assert {key: (SECTION, opt.default) for key, opt in OPTIONS.items()} == calls


class TestProviderInfo:
    """get_provider_info() and provider_config(): what Airflow reads from the entry point."""

    def test_validates_against_airflows_schema(self) -> None:
        """The provider info passes the provider_info.schema.json shipped with Airflow."""
        schema_file = Path(airflow.__file__).parent / "provider_info.schema.json"
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        jsonschema.validate(get_provider_info(), schema)

    def test_package_name(self) -> None:
        """package-name is the distribution's name (Airflow checks the two match)."""
        assert "workflow-audit" == get_provider_info()["package-name"]

    def test_config_is_provider_config(self) -> None:
        """The provider's config entry is provider_config(), one [workflow_audit] section."""
        assert provider_config() == get_provider_info()["config"]
        assert [SECTION] == list(provider_config())

    def test_every_option_is_documented(self) -> None:
        """Every OPTIONS key appears with its description, type and default."""
        options = provider_config()[SECTION]["options"]
        assert list(OPTIONS) == list(options)
        for key, opt in OPTIONS.items():
            entry = options[key]
            assert (opt.description, opt.type, opt.default) == (
                entry["description"],
                entry["type"],
                entry["default"],
            ), key
            assert bool(entry["description"].strip()), key

    def test_only_keys_and_store_urls_are_sensitive(self) -> None:
        """signing_key, privacy_store (a URL that may hold a password) and privacy_keys are
        marked sensitive (Airflow masks them); no other option is."""
        options = provider_config()[SECTION]["options"]
        sensitive = sorted(key for key, entry in options.items() if entry.get("sensitive"))
        assert ["privacy_keys", "privacy_store", "signing_key"] == sensitive


class TestAnchorOptions:
    """anchor_interval and witnesses: an option beats WORKFLOW_AUDIT_*, empty falls through."""

    def test_options_map_onto_the_core_config(self) -> None:
        """anchor_interval becomes anchor_interval_s; witnesses, split at ';', witnesses."""
        from audit_core._cosign import Cosigner

        keys = [str(Cosigner.generate(f"w{i}.example").key) for i in range(2)]
        text = f"http://127.0.0.1:7380 {keys[0]} ; https://w1.example/tlog {keys[1]};"
        settings = _load({"anchor_interval": "7.5", "witnesses": text})
        assert 7.5 == settings.audit.anchor_interval_s
        assert (
            f"http://127.0.0.1:7380 {keys[0]}",
            f"https://w1.example/tlog {keys[1]}",
        ) == settings.audit.witnesses

    def test_empty_falls_through_to_the_environment(self) -> None:
        """Empty options: $WORKFLOW_AUDIT_ANCHOR_INTERVAL, else the core's 60 s, no witness."""
        assert (60.0, ()) == (_load().audit.anchor_interval_s, _load().audit.witnesses)
        env = {"WORKFLOW_AUDIT_ANCHOR_INTERVAL": "12"}
        assert 12.0 == _load(env=env).audit.anchor_interval_s
        assert 3.0 == _load({"anchor_interval": "3"}, env=env).audit.anchor_interval_s

    @pytest.mark.parametrize("value", ["0", "-1", "soon", "3601"])
    def test_bad_interval_is_a_config_error(self, value: str) -> None:
        """An interval that is not 0 < seconds <= 3600 names the option."""
        with pytest.raises(ConfigError, match=r"\[workflow_audit\] anchor_interval"):
            _load({"anchor_interval": value})
