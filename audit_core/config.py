"""One frozen configuration object: explicit arguments beat environment beat defaults.

>>> cfg = AuditConfig.from_env({"WORKFLOW_AUDIT_CHAIN": "prod"}, ledger_url="sqlite:///a.db")
>>> (cfg.chain, cfg.ledger_url)
('prod', 'sqlite:///a.db')

Environment variables (all optional; README "Configuration" lists them too):

=================================  ==========================================================
``WORKFLOW_AUDIT_LEDGER``          ledger URL, ``sqlite:///rel.db``, ``sqlite:////abs.db`` or
                                   ``postgresql://user:pw@host:port/db``
                                   (default ``$XDG_DATA_HOME/workflow-audit/ledger.db``, or
                                   ``~/.local/share/workflow-audit/ledger.db``)
``WORKFLOW_AUDIT_CHAIN``           chain id records go to (default ``default``)
``WORKFLOW_AUDIT_ACTOR``           who records, ``type:id`` (default ``process:USER@HOST``)
``WORKFLOW_AUDIT_SYNCHRONOUS``     SQLite ``synchronous``: ``FULL`` (default) or ``NORMAL``,
                                   ``EXTRA``, ``OFF``
``WORKFLOW_AUDIT_BUSY_TIMEOUT``    seconds a writer waits for the ledger lock (default 30)
``WORKFLOW_AUDIT_MAX_VALUE_BYTES`` values larger than this become a digest (default 16384)
``WORKFLOW_AUDIT_REDACT_KEYS``     comma-separated extra key patterns (regular expressions)
                                   to redact, added to the built-in list
``WORKFLOW_AUDIT_SIGNING_KEY``     checkpoint signing key: a ``PRIVATE+KEY+…`` string or the
                                   path of a file holding one (default: a local key created
                                   beside the ledger, ``<ledger>.key``, announced loudly)
``WORKFLOW_AUDIT_ORIGIN``          checkpoint origin prefix; a chain's origin is
                                   ``<prefix>/<chain>`` (default: the signing key's name)
``WORKFLOW_AUDIT_CHECKPOINT_EVERY``  sign a checkpoint every N records (default 1000; 0: only
                                   on demand and when a trail closes)
``WORKFLOW_AUDIT_CHECKPOINT_INTERVAL``  ... or when the last one is older than this many
                                   seconds at the next append (default 300)
``WORKFLOW_AUDIT_ANCHOR_INTERVAL``  seconds between the rounds of a long-running component's
                                   anchor: sign every chain that grew, ask the witnesses
                                   (default 60; :mod:`audit_core.anchor`)
``WORKFLOW_AUDIT_WITNESSES``       c2sp.org/tlog-witness witnesses asked to cosign each new
                                   checkpoint: entries ``URL VKEY`` (the submission URL and
                                   the witness's 0x04 verifier key) separated by ``;`` or
                                   newlines (default none)
``WORKFLOW_AUDIT_WITNESS_TIMEOUT`` seconds one witness exchange may take (default 5)
``WORKFLOW_AUDIT_FLUSH_SINKS``     sinks the Airflow/Prefect hooks ship to, best effort and in
                                   the background, after a task or run ends (``otlp,s3``;
                                   default none: ``workflow-audit ship --follow`` does it)
``WORKFLOW_AUDIT_S3_URL``          ``s3://BUCKET/PREFIX`` of the s3 sink
``WORKFLOW_AUDIT_SPOOL_DIR``       where records that cannot reach the ledger wait (locked,
                                   read-only, disk full, server down) until the next writer
                                   or ``workflow-audit spool drain`` appends them (default
                                   ``<ledger>.spool/`` beside a SQLite ledger, else
                                   ``$XDG_DATA_HOME/workflow-audit/spool``)
``WORKFLOW_AUDIT_PRIVACY_POLICY``  a privacy policy file (``.toml``, ``.yaml``) or
                                   ``default`` (the built-in rules): personal fields become
                                   keyed commitments, their values go to the privacy store
                                   (docs/PRIVACY.md; default: no policy)
``WORKFLOW_AUDIT_PRIVACY_STORE``   the erasable privacy store, ``sqlite:///PATH`` or
                                   ``postgresql://…`` (default ``<ledger>.privacy.db`` beside a
                                   SQLite ledger, the ledger's database for PostgreSQL)
``WORKFLOW_AUDIT_PRIVACY_KEYS``    the per-subject key store: a file path (default
                                   ``<ledger>.privacy-keys.db`` beside a SQLite ledger;
                                   required with PostgreSQL) or a
                                   ``workflow_audit.keystores`` URL
``WORKFLOW_AUDIT_PRIVACY_SYNCHRONOUS``  the privacy store's SQLite ``synchronous``
                                   (default ``NORMAL``: an opening lost on power failure
                                   leaves a commitment nobody can open, never a clear value;
                                   ``FULL`` keeps every value openable, at one more fsync a
                                   record)
=================================  ==========================================================
"""

from __future__ import annotations

import getpass
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from audit_core._normalize import DEFAULT_MAX_VALUE_BYTES, DEFAULT_REDACT_KEYS
from audit_core.errors import ConfigError
from audit_core.ledgers import masked_url, synchronous_level

__all__ = ["ENV_PREFIX", "AuditConfig", "default_ledger_url"]

ENV_PREFIX = "WORKFLOW_AUDIT_"


def default_ledger_url(env: Mapping[str, str] | None = None) -> str:
    """``sqlite:///`` + ``$XDG_DATA_HOME/workflow-audit/ledger.db`` (XDG Base Directory spec)."""
    env = os.environ if env is None else env
    data_home = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "sqlite:///" + str(Path(data_home) / "workflow-audit" / "ledger.db")


def _default_actor() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return ("process", f"{user}@{socket.gethostname()}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """Everything the core needs; build it with :meth:`from_env` to honour the environment."""

    ledger_url: str = field(default_factory=default_ledger_url)
    chain: str = "default"
    actor: tuple[str, str] = field(default_factory=_default_actor)
    synchronous: str = "FULL"
    busy_timeout_s: float = 30.0
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    signing_key: str | None = None
    origin: str | None = None
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 300.0
    anchor_interval_s: float = 60.0
    witnesses: tuple[str, ...] = ()
    witness_timeout_s: float = 5.0
    flush_sinks: tuple[str, ...] = ()
    s3_url: str | None = None
    spool_dir: str | None = None
    privacy_policy: str | None = None
    privacy_store: str | None = None
    privacy_keys: str | None = None
    privacy_synchronous: str = "NORMAL"

    def __repr__(self) -> str:
        # Configs end up in logs and tracebacks: no key material, no URL password (rule 18).
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "signing_key"}
        shown["ledger_url"] = masked_url(self.ledger_url)
        for name in ("s3_url", "privacy_store", "privacy_keys"):
            if (url := getattr(self, name)) is not None:
                shown[name] = masked_url(url)
        key = self.signing_key
        shown["signing_key"] = None if key is None else "***" if "+" in key else key
        return "AuditConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __post_init__(self) -> None:
        synchronous_level(self.synchronous)  # kept as given; the ledger upper-cases it
        synchronous_level(self.privacy_synchronous)
        if self.busy_timeout_s <= 0:
            raise ConfigError(f"busy_timeout_s must be positive, not {self.busy_timeout_s}")
        if self.max_value_bytes < 64:
            raise ConfigError(f"max_value_bytes must be at least 64, not {self.max_value_bytes}")
        if self.checkpoint_every < 0 or self.checkpoint_interval_s <= 0:
            raise ConfigError("checkpoint_every must be >= 0 and checkpoint_interval_s > 0")
        if not all(
            0 < s < math.inf for s in (self.anchor_interval_s, self.witness_timeout_s)
        ):  # inf/nan: a round never comes, an exchange never ends
            raise ConfigError(
                f"anchor_interval_s ({self.anchor_interval_s}) and witness_timeout_s "
                f"({self.witness_timeout_s}) must be finite and positive"
            )
        if isinstance(self.witnesses, str):
            raise ConfigError("witnesses is a sequence of 'URL VKEY' strings, not one string")
        # Each entry is parsed where it is used (audit_core.anchor.start_anchor, health,
        # `checkpoint`), not here: a mistyped witness must cost the witnessing only, never the
        # recording of every hook that loads this configuration (fail-open).
        if len(self.actor) != 2 or not all(self.actor):
            raise ConfigError(f"actor must be (type, id), both non-empty, not {self.actor!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AuditConfig:
        """Defaults, overridden by ``WORKFLOW_AUDIT_*`` variables, overridden by ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"ledger_url": default_ledger_url(env)}
        for suffix, name, parse in _FROM_ENV:
            if v := env.get(ENV_PREFIX + suffix):
                values[name] = parse(ENV_PREFIX + suffix, v)
        values.update(overrides)
        return cls(**values)

    def evolve(self, **changes: Any) -> AuditConfig:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


def _number(name: str, text: str, kind: type[float] | type[int]) -> Any:
    try:
        return kind(text)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a {kind.__name__}, not {text!r}") from exc


def _text(name: str, text: str) -> str:
    return text


def _actor(name: str, text: str) -> tuple[str, str]:
    kind, sep, ident = text.partition(":")
    if not sep:
        raise ConfigError(f"{name} must be 'type:id', not {text!r}")
    return (kind, ident)


def _names(name: str, text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _witnesses(name: str, text: str) -> tuple[str, ...]:
    # entries "URL VKEY" separated by ';' or newlines (a URL and a vkey hold neither)
    return tuple(w.strip() for w in text.replace(";", "\n").split("\n") if w.strip())


def _redact_keys(name: str, text: str) -> tuple[str, ...]:
    return DEFAULT_REDACT_KEYS + _names(name, text)  # added to the built-in list


#: ``WORKFLOW_AUDIT_<suffix>`` -> (field, parser of its text), read in this order (so the first
#: bad variable of this list is the one reported); an empty variable counts as unset.
_FROM_ENV: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("LEDGER", "ledger_url", _text),
    ("CHAIN", "chain", _text),
    ("ACTOR", "actor", _actor),
    ("SYNCHRONOUS", "synchronous", _text),
    ("BUSY_TIMEOUT", "busy_timeout_s", partial(_number, kind=float)),
    ("MAX_VALUE_BYTES", "max_value_bytes", partial(_number, kind=int)),
    ("SIGNING_KEY", "signing_key", _text),
    ("ORIGIN", "origin", _text),
    ("CHECKPOINT_EVERY", "checkpoint_every", partial(_number, kind=int)),
    ("CHECKPOINT_INTERVAL", "checkpoint_interval_s", partial(_number, kind=float)),
    ("ANCHOR_INTERVAL", "anchor_interval_s", partial(_number, kind=float)),
    ("WITNESSES", "witnesses", _witnesses),
    ("WITNESS_TIMEOUT", "witness_timeout_s", partial(_number, kind=float)),
    ("FLUSH_SINKS", "flush_sinks", _names),
    ("S3_URL", "s3_url", _text),
    ("SPOOL_DIR", "spool_dir", _text),
    ("PRIVACY_POLICY", "privacy_policy", _text),
    ("PRIVACY_STORE", "privacy_store", _text),
    ("PRIVACY_KEYS", "privacy_keys", _text),
    ("PRIVACY_SYNCHRONOUS", "privacy_synchronous", _text),
    ("REDACT_KEYS", "redact_keys", _redact_keys),
)
