"""The logs a witness trusts: which verifier keys may sign which checkpoint origins.

>>> from audit_core import Signer
>>> key = Signer.generate("ci.example/audit").verifier
>>> logs = TrustedLogs.parse([str(key)])
>>> [v.name for v in logs.verifiers("ci.example/audit/default")]
['ci.example/audit']
>>> logs.verifiers("ci.example/other")
[]

c2sp.org/tlog-witness: "Each witness is configured with a list of supported log public keys.
For each log, uniquely identified by its origin line, [...]". A workflow-audit ledger signs one
origin per chain with one key (``<key name>/<chain>``, c2sp.org/tlog-checkpoint allows the
origin to differ from the key name), so an entry may cover a family of origins:

- ``VKEY``: origin equal to the key's name, or starting with ``<key name>/``
- ``ORIGIN=VKEY``: exactly that origin
- ``PREFIX/*=VKEY``: every origin starting with ``PREFIX/``

The keys are Ed25519 (0x01) signed-note verifier keys (c2sp.org/signed-note).

Rules of keys with different names must not cover a common origin (:func:`_overlap`): the
spec identifies a log by its origin, and the first key to get a checkpoint of an origin
cosigned would otherwise own that origin's history for good, locking the other log out (or
poisoning it with a checkpoint the other log never made). Keys sharing a name (a log's
rotated key) may cover the same origins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from audit_core._note import Verifier
from audit_core.errors import ConfigError, SignatureError

__all__ = ["LogRule", "TrustedLogs", "read_logs_file"]


@dataclass(frozen=True, slots=True)
class LogRule:
    """``key`` signs ``origin`` exactly, or (``prefix``) every origin starting with it."""

    origin: str
    prefix: bool
    key: Verifier

    def matches(self, origin: str) -> bool:
        return origin.startswith(self.origin) if self.prefix else origin == self.origin

    def shown(self) -> str:
        """The origins covered: ``ORIGIN`` or ``PREFIX/*``."""
        return f"{self.origin}*" if self.prefix else self.origin

    def __str__(self) -> str:
        return f"{self.shown()}={self.key}"

    @classmethod
    def parse(cls, entry: str) -> list[LogRule]:
        """The rules of one ``--log`` entry; :class:`ConfigError` names what is wrong
        (never echoing the entry: it may be a private key given by mistake)."""
        entry = entry.strip()
        try:
            key = Verifier.parse(entry)
        except SignatureError as plain:
            if entry.startswith("PRIVATE+KEY+"):
                raise ConfigError(f"--log: {plain}") from plain
            return [cls._with_origin(entry, plain)]
        return [cls(key.name, False, key), cls(key.name + "/", True, key)]

    @classmethod
    def _with_origin(cls, entry: str, plain: SignatureError) -> LogRule:
        # The key's base64 may end in '=': try each '=' from the left whose right side is a
        # verifier key (origins with '=' in them stay possible).
        at = entry.find("=")
        while at > 0:
            try:
                key = Verifier.parse(entry[at + 1 :])
            except SignatureError:
                at = entry.find("=", at + 1)
                continue
            origin = entry[:at]
            if "\n" in origin:
                break
            if origin.endswith("/*"):
                return cls(origin[:-1], True, key)
            return cls(origin, False, key)
        raise ConfigError(
            f"--log: not VKEY, ORIGIN=VKEY or PREFIX/*=VKEY ({plain}); the key is a log's "
            "Ed25519 verifier key (its .pub file)"
        )


@dataclass(frozen=True, slots=True)
class TrustedLogs:
    """Every configured rule; an origin's trusted keys are those of the rules matching it."""

    rules: tuple[LogRule, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedLogs:
        rules: list[LogRule] = []
        for entry in entries:
            rules += LogRule.parse(entry)
        if not rules:
            raise ConfigError("a witness needs at least one --log (or --logs-file entry)")
        unique = tuple(dict.fromkeys(rules))
        for i, one in enumerate(unique):
            for other in unique[i + 1 :]:
                if one.key.name != other.key.name and _overlap(one, other):
                    raise ConfigError(
                        f"--log rules overlap: {one.shown()} (key {one.key.name!r}) and "
                        f"{other.shown()} (key {other.key.name!r}) may both sign one origin; "
                        "a witness identifies a log by its origin (c2sp.org/tlog-witness): "
                        "give each origin to one log (ORIGIN=VKEY or PREFIX/*=VKEY rules)"
                    )
        return cls(unique)

    def verifiers(self, origin: str) -> list[Verifier]:
        """The keys trusted for ``origin`` ([]: the origin is unknown, a 404)."""
        return list(dict.fromkeys(rule.key for rule in self.rules if rule.matches(origin)))

    @property
    def count(self) -> int:
        """How many distinct log keys are configured."""
        return len({rule.key for rule in self.rules})


def _overlap(one: LogRule, other: LogRule) -> bool:
    """Can one origin match both rules? Two equal exact origins, an exact origin under a
    prefix, or one prefix under the other."""
    if not one.prefix and not other.prefix:
        return one.origin == other.origin
    if one.prefix and other.prefix:
        return one.origin.startswith(other.origin) or other.origin.startswith(one.origin)
    exact, prefix = (other, one) if one.prefix else (one, other)
    return prefix.matches(exact.origin)


def read_logs_file(path: Path | str) -> Sequence[str]:
    """The entries of a logs file: one ``--log`` entry a line; blank and ``#`` lines skipped."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the logs file {path}: {why}") from exc
    entries = []
    for line in map(str.strip, text.splitlines()):
        if line and not line.startswith("#"):  # a comment is a whole line
            entries.append(line)
    return entries
