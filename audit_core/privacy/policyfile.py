"""Reading a privacy policy file (TOML or YAML) into a :class:`~audit_core.privacy.policy.Policy`.

>>> policy = parse_policy({"version": 1, "rules": [{"pointer": "/data/email",
...     "action": "commit"}]}, source="inline")
>>> policy.rules[0].pointer, policy.digest.startswith("sha256:")
('/data/email', True)

The file format (docs/PRIVACY.md): ``version = 1``, ``include_defaults`` (default true: the
built-in rules after the file's), ``closed`` (more nodes that fail closed) and ``rules``, each
with ``pointer``, ``action`` (keep, redact, commit, encrypt) and optionally ``subject``,
``events`` and ``when``. Anything else is a :class:`~audit_core.errors.PolicyError` naming the
file, the rule number and the field; a file is at most 1 MiB and 10,000 rules.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import Any, Final, cast

from audit_core._jcs import canonical_bytes
from audit_core._normalize import JSON
from audit_core.errors import AuditError, PolicyError
from audit_core.privacy.policy import (
    ACTIONS,
    CLOSED,
    DEFAULT_RULES,
    MAX_FILE_BYTES,
    MAX_RULES,
    Action,
    Policy,
    Rule,
)

__all__ = ["load_policy", "parse_policy"]


# -- reading a policy file ------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset({"version", "include_defaults", "closed", "rules"})
_RULE_KEYS: Final = frozenset({"pointer", "action", "subject", "events", "when"})
_BAD_TILDE: Final = re.compile(r"~(?![01])")


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """The policy in a ``.toml`` or ``.yaml``/``.yml`` file; :class:`PolicyError` (naming the
    file) for anything that is not a well-formed policy of at most 1 MiB."""
    name = os.fspath(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise PolicyError(f"{name}: a policy file is .toml, .yaml or .yml")
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(
            f"{name}: cannot read the policy file ({exc.strerror or type(exc).__name__})"
        ) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(f"{name}: a policy file is at most {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{name}: not UTF-8 (byte {exc.start})") from exc
    doc = _parse_toml(name, text) if suffix == ".toml" else _parse_yaml(name, text)
    return parse_policy(doc, source=name)


def _module(name: str, *fallbacks: str) -> Any:
    for candidate in (name, *fallbacks):
        try:
            return importlib.import_module(candidate)
        except ImportError:
            continue
    return None


def _parse_toml(name: str, text: str) -> object:
    toml = _module("tomllib", "tomli")  # tomllib from Python 3.11; tomli is its 3.10 backport
    if toml is None:
        raise PolicyError(f"{name}: a TOML policy on Python 3.10 needs tomli (pip install tomli)")
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise PolicyError(f"{name}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise PolicyError(f"{name}: not valid TOML: nested too deep") from exc


def _parse_yaml(name: str, text: str) -> object:
    yaml = _module("yaml")
    if yaml is None:
        raise PolicyError(f"{name}: a YAML policy needs PyYAML (pip install pyyaml), or use TOML")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # only the problem and its line: the snippet YAML quotes may hold a when value
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed"
        raise PolicyError(f"{name}: not valid YAML{where}: {problem}") from exc
    except RecursionError as exc:
        raise PolicyError(f"{name}: not valid YAML: nested too deep") from exc


def parse_policy(doc: Mapping[str, object] | object, *, source: str) -> Policy:
    """The policy a parsed file holds (module docstring); :class:`PolicyError` naming
    ``source``, the rule number and the field for anything else."""
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{source}: a policy is a table/mapping at its top")
    unknown = sorted(str(k) for k in doc if k not in _TOP_KEYS)
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {unknown}; expected {sorted(_TOP_KEYS)}")
    version = doc.get("version")
    if type(version) is not int or version != 1:
        raise PolicyError(f"{source}: version must be 1")
    include = doc.get("include_defaults", True)
    if not isinstance(include, bool):
        raise PolicyError(f"{source}: include_defaults is true or false")
    rules_doc = doc.get("rules", [])
    closed_doc = doc.get("closed", [])
    for key, value in (("rules", rules_doc), ("closed", closed_doc)):
        if not isinstance(value, list):
            raise PolicyError(f"{source}: {key} is a list")
        if len(value) > MAX_RULES:
            raise PolicyError(f"{source}: at most {MAX_RULES} {key}")
    rules = [_parse_rule(source, i, r) for i, r in enumerate(cast(list[object], rules_doc), 1)]
    closed = dict.fromkeys(CLOSED)
    for i, pointer in enumerate(cast(list[object], closed_doc), 1):
        _check_pointer(f"{source} closed {i}", pointer, relative=False)
        closed.setdefault(cast(str, pointer))
    return Policy((*rules, *(DEFAULT_RULES if include else ())), tuple(closed), source)


def _parse_rule(source: str, number: int, doc: object) -> Rule:
    where = f"{source} rule {number}"
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{where}: a rule is a table/mapping")
    unknown = sorted(str(k) for k in doc if k not in _RULE_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; expected {sorted(_RULE_KEYS)}")
    pointer = doc.get("pointer")
    _check_pointer(f"{where}: pointer", pointer, relative=False)
    action = doc.get("action")
    if action is None:
        raise PolicyError(f"{where}: action is missing (one of {', '.join(ACTIONS)})")
    if action not in ACTIONS:
        shown = repr(action) if isinstance(action, str) and len(action) < 40 else "the value"
        raise PolicyError(f"{where}: action {shown} is not one of {', '.join(ACTIONS)}")
    subject = doc.get("subject")
    if subject is not None and action in ("keep", "redact"):
        raise PolicyError(f"{where}: subject is only for commit and encrypt")
    if action in ("commit", "encrypt"):
        subject = "self" if subject is None else subject
        if subject != "self":
            _check_pointer(f"{where}: subject", subject, relative=True)
    events = doc.get("events", ["*"])
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e for e in events)
    ):
        raise PolicyError(f"{where}: events is a non-empty list of event type patterns")
    when = doc.get("when", {})
    if not isinstance(when, Mapping):
        raise PolicyError(f"{where}: when is a table/mapping of pointer = value")
    for key, value in when.items():
        _check_pointer(f"{where}: when", key, relative=True)
        if isinstance(value, (dict, list)):  # checked first: a YAML alias bomb is never walked
            raise PolicyError(
                f"{where}: when {key} compares with a string, number, boolean or null"
            )
        try:
            canonical_bytes(value)
        except AuditError as exc:  # a YAML date, NaN, a huge integer: not JSON
            raise PolicyError(f"{where}: when {key} is not a JSON value") from exc
    return Rule(
        cast(str, pointer),
        cast(Action, action),
        cast("str | None", subject),
        tuple(cast(list[str], events)),
        tuple((cast(str, k), cast(JSON, v)) for k, v in when.items()),
    )


def _check_pointer(where: str, pointer: object, *, relative: bool) -> None:
    """RFC 6901 §3: '/'-separated tokens, '~' only in '~0' and '~1' (``@/…`` if relative)."""
    if not isinstance(pointer, str):
        raise PolicyError(f"{where}: a JSON pointer is a string")
    body = pointer[1:] if relative and pointer.startswith("@/") else pointer
    if not body.startswith("/"):
        shape = "'/…' or '@/…'" if relative else "'/'"
        raise PolicyError(f"{where}: {pointer!r} is not a JSON pointer (it starts with {shape})")
    if _BAD_TILDE.search(body):
        raise PolicyError(f"{where}: {pointer!r} has a '~' that is not '~0' or '~1'")
