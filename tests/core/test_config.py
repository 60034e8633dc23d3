"""AuditConfig: explicit arguments beat environment beat defaults."""

from __future__ import annotations

import pytest

from audit_core import AuditConfig
from audit_core._normalize import DEFAULT_REDACT_KEYS
from audit_core.errors import ConfigError
from audit_core.ledgers import SYNCHRONOUS


class TestAuditConfig:
    """Configuration precedence and validation."""

    def test_defaults_follow_xdg(self) -> None:
        """Without variables the ledger lives under $XDG_DATA_HOME/workflow-audit."""
        cfg = AuditConfig.from_env({"XDG_DATA_HOME": "/data"})
        assert "sqlite:////data/workflow-audit/ledger.db" == cfg.ledger_url
        assert ("default", "FULL") == (cfg.chain, cfg.synchronous)

    def test_environment_overrides_defaults(self) -> None:
        """WORKFLOW_AUDIT_* variables set every option."""
        cfg = AuditConfig.from_env(
            {
                "WORKFLOW_AUDIT_LEDGER": "sqlite:////x/l.db",
                "WORKFLOW_AUDIT_CHAIN": "prod",
                "WORKFLOW_AUDIT_ACTOR": "service:airflow",
                "WORKFLOW_AUDIT_SYNCHRONOUS": "NORMAL",
                "WORKFLOW_AUDIT_BUSY_TIMEOUT": "2.5",
                "WORKFLOW_AUDIT_MAX_VALUE_BYTES": "1024",
                "WORKFLOW_AUDIT_REDACT_KEYS": "ssn, iban",
            }
        )
        assert "sqlite:////x/l.db" == cfg.ledger_url
        assert ("prod", ("service", "airflow")) == (cfg.chain, cfg.actor)
        assert ("NORMAL", 2.5, 1024) == (cfg.synchronous, cfg.busy_timeout_s, cfg.max_value_bytes)
        assert (*DEFAULT_REDACT_KEYS, "ssn", "iban") == cfg.redact_keys

    def test_arguments_override_environment(self) -> None:
        """Explicit keyword arguments win over the environment."""
        cfg = AuditConfig.from_env({"WORKFLOW_AUDIT_CHAIN": "prod"}, chain="dev")
        assert "dev" == cfg.chain

    @pytest.mark.parametrize(
        "env",
        [
            {"WORKFLOW_AUDIT_BUSY_TIMEOUT": "soon"},
            {"WORKFLOW_AUDIT_SYNCHRONOUS": "SOMETIMES"},
            {"WORKFLOW_AUDIT_ACTOR": "no-colon"},
            {"WORKFLOW_AUDIT_MAX_VALUE_BYTES": "1"},
        ],
    )
    def test_invalid_values_raise_config_error(self, env: dict[str, str]) -> None:
        """A bad variable is a ConfigError naming the problem, not a crash later."""
        with pytest.raises(ConfigError):
            AuditConfig.from_env(env)

    @pytest.mark.parametrize("value", ["OFF", "normal", "Full", "EXTRA"])
    def test_every_synchronous_level_is_accepted(self, value: str) -> None:
        """Each of the ledgers' synchronous levels, in any case, is a valid setting."""
        assert value == AuditConfig(synchronous=value).synchronous

    def test_synchronous_error_lists_every_accepted_level(self) -> None:
        """The error for a bad synchronous value names every level accepted, OFF included."""
        with pytest.raises(ConfigError) as caught:
            AuditConfig.from_env({"WORKFLOW_AUDIT_SYNCHRONOUS": "SOMETIMES"})
        assert ("synchronous must be OFF, NORMAL, FULL or EXTRA, not 'SOMETIMES'") == str(
            caught.value
        )
        assert all(level in str(caught.value) for level in SYNCHRONOUS)

    def test_is_frozen(self) -> None:
        """Config objects are immutable; evolve() makes a changed copy."""
        cfg = AuditConfig.from_env({})
        with pytest.raises(AttributeError):
            cfg.chain = "x"  # type: ignore[misc]
        assert "x" == cfg.evolve(chain="x").chain
