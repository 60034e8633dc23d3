"""Secrets never reach the ledger file, and no error message echoes key material or passwords.

A marker secret is planted in every shape a secret takes in practice (a secret-looking key,
a URL password holding "/" or "@", HTTP credentials after a tab or a colon, libpq DSN text,
``password=…`` in an object's repr and in a DataFrame's, key/value pair lists, a failure
message), at any depth, in ``data``, ``subject`` or ``actor``; the record goes through a real
SQLite ledger file, and no byte of the ``.db``, ``-wal`` or ``-shm`` file holds the marker.
"""

from __future__ import annotations

import importlib.util
import json
import string
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, AuditTrail, redact, verify_chain
from audit_core._note import Signer
from audit_core.checkpoint import load_signer
from audit_core.errors import ConfigError
from audit_core.hooks import MAX_MESSAGE_CHARS, failure_data
from audit_core.ledgers import masked_url, open_ledger

LEDGER_SUFFIXES = ("", "-wal", "-shm")


class ConnRepr:
    """An object whose repr shows its connection settings, password included."""

    def __init__(self, password: str) -> None:
        self.password = password

    def __repr__(self) -> str:
        return f"Conn(host='db', port=5432, password='{self.password}')"


class FrameLike:
    """Prints like a pandas DataFrame whose one column holds libpq DSNs."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def __repr__(self) -> str:
        return f"                  conn\n0  {self.dsn}\n1  host=replica"


def _frames() -> list[Callable[[str], object]]:
    """DataFrame stand-ins: the look-alike always, real pandas where it is installed."""
    makers: list[Callable[[str], object]] = [FrameLike]
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        makers.append(lambda dsn: pd.DataFrame({"conn": [dsn, "host=replica"]}))
    return makers


#: Each shape turns a marker into a value that holds it as a secret.
SHAPES: dict[str, Callable[[str], object]] = {
    "secret key": lambda m: {"password": m},
    "camelCase secret key": lambda m: {"apiKey": m},
    "header-style secret key": lambda m: {"X-Api-Key": m},
    "env-style secret key": lambda m: {"DB_PASSWORD": m},
    "url password with /": lambda m: f"postgresql://etl:ab/{m}@db:5432/prod",
    "url password with @": lambda m: f"mysql://etl:ab@{m}@db/prod",
    "url password, user with @": lambda m: f"smtp://me@corp.example:{m}@mail/x",
    "bearer after a tab": lambda m: f"Authorization: Bearer\t{m}",
    "bearer after a colon": lambda m: f"bearer:{m}",
    "basic after a space": lambda m: f"sent Basic {m} to the proxy",
    "libpq dsn": lambda m: f"host=db port=5432 password={m} dbname=prod",
    "quoted dsn value": lambda m: f"host=db password='{m}' sslmode=require",
    "password= in a repr": ConnRepr,
    "dict repr": lambda m: repr({"user": "etl", "password": m}),
    "json text": lambda m: f'{{"user": "etl", "client_secret": "{m}"}}',
    "pair list": lambda m: [["PASSWORD", m]],
    "pair tuples": lambda m: (("user", "etl"), ("api_key", m)),
    "argument vector": lambda m: ["--host", "db", "--password", m],
    "command line": lambda m: f"psql --host db --password={m} -c 'select 1'",
    "kubernetes env": lambda m: [{"name": "DB_PASSWORD", "value": m}],
    "kubernetes env as text": lambda m: repr([{"name": "DB_PASSWORD", "value": m}]),
    "json inside json": lambda m: json.dumps(json.dumps({"user": "etl", "password": m})),
    "failure message": lambda m: failure_data(RuntimeError(f"connect failed: password={m}")),
    "failure with url": lambda m: failure_data(OSError(f"cannot reach redis://:{m}@cache:6379")),
}
for _i, _frame in enumerate(_frames()):
    SHAPES[f"dataframe repr {_i}"] = lambda m, f=_frame: f(f"host=db password={m}")  # type: ignore[misc]

#: Secrets are letters and digits here, long enough to be told from anything else in a record.
markers = st.text(string.ascii_letters + string.digits, min_size=12, max_size=24).map(
    lambda s: "Zq" + s
)
#: Where the secret sits: a path of object keys and list positions (ordinary names).
nestings = st.lists(
    st.sampled_from(["params", "conn", "items", "0", "meta"]) | st.integers(0, 2), max_size=4
)


def _nest(value: object, path: list[str | int]) -> object:
    for step in reversed(path):
        value = {step: value} if isinstance(step, str) else [None] * step + [value]
    return value


def _ledger_bytes(ledger: Path) -> bytes:
    files = [ledger.with_name(ledger.name + suffix) for suffix in LEDGER_SUFFIXES]
    return b"".join(f.read_bytes() for f in files if f.exists())


def _record(trail: AuditTrail, where: str, value: object) -> None:
    if where == "data":
        trail.record("task.failed", {"detail": value})
    elif where == "whole data":  # a non-object payload, recorded as {"value": …}
        trail.record("task.failed", value)
    elif where == "subject":
        trail.record("task.failed", {}, subject={"dag_id": "etl", "run_id": "r1", "x": value})
    elif where == "actor":
        trail.record("access.denied", {}, actor={"type": "user", "id": "alice", "via": value})
    else:  # an actor tuple's id: its text
        trail.record("access.denied", {}, actor=("user", value))  # type: ignore[arg-type]


class TestNoSecretOnDisk:
    """No byte of the ledger files holds a planted secret."""

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        marker=markers,
        shape=st.sampled_from(sorted(SHAPES)),
        path=nestings,
        where=st.sampled_from(["data", "whole data", "subject", "actor", "actor id"]),
    )
    def test_planted_secret_is_in_no_ledger_byte(
        self, marker: str, shape: str, path: list[str | int], where: str
    ) -> None:
        """Whatever its shape, depth and field, the secret is in neither .db, -wal nor -shm."""
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.db"
            config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
            with AuditTrail(config) as trail:
                _record(trail, where, _nest(SHAPES[shape](marker), path))
                assert marker.encode() not in _ledger_bytes(ledger)  # WAL still open
                assert 1 == verify_chain(trail.ledger, "default").size
            assert marker.encode() not in _ledger_bytes(ledger)

    def test_orchestrator_identifiers_stay_readable(self, trail: AuditTrail) -> None:
        """Subject identifiers are not secrets: dag_id, run_id and task_id are kept as given."""
        subject = {
            "dag_id": "token_refresh",
            "run_id": "scheduled__2026-11-28T10:00:00+00:00",
            "task_id": "rotate_password",
        }
        stored = trail.record("task.started", {}, subject=subject)
        assert subject == orjson.loads(stored.body)["subject"]


class BadStrError(Exception):
    """An exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ explodes")


class TestFailureMessages:
    """failure_data(): its message goes through the processors like any data, whole words only."""

    def test_clipped_message_keeps_no_half_secret(self) -> None:
        """A message clipped inside a URL password drops the cut word, so no part of it stays."""
        planted = "Zq7hunter2hunter2"
        prefix = "x " * 990 + "postgresql://etl:"  # the clip falls inside the password
        message = prefix + planted + "@db/prod and more"
        data = redact()(failure_data(RuntimeError(message)))
        assert planted[: MAX_MESSAGE_CHARS - len(prefix)] not in str(data["message"])
        assert str(data["message"]).endswith("more characters]")

    def test_failure_message_is_redacted_in_the_record(self, trail: AuditTrail) -> None:
        """A failure message holding a DSN password is masked in the stored record."""
        stored = trail.record("task.failed", failure_data(OSError("host=db password=Zq7hunter2")))
        assert b"Zq7hunter2" not in stored.body
        assert "host=db password=[REDACTED]" == orjson.loads(stored.body)["data"]["message"]

    def test_exception_whose_str_raises(self) -> None:
        """An exception whose __str__ raises still gives its type, and a placeholder message."""
        data = failure_data(BadStrError())
        assert f"{__name__}.BadStrError" == data["error_type"]
        assert "<BadStrError with a failing __str__>" == data["message"]


class TestMessages:
    """Error messages never echo a key or a password."""

    def test_private_key_given_as_verifier_is_not_echoed(
        self, populated_ledger: Path, tmp_path: Path
    ) -> None:
        """`verify --key PRIVATE+KEY+…` exits 2 and prints no part of the key."""
        private = str(Signer.generate("auditor.example/key"))
        secret_part = private.split("+", 4)[4]
        done = _cli("verify", "--ledger", str(populated_ledger), "--key", private)
        assert 2 == done.returncode
        assert "private" in done.stderr
        assert secret_part not in done.stdout + done.stderr
        key_file = tmp_path / "wrong.pub"
        key_file.write_text(private + "\n")
        done = _cli("verify", "--ledger", str(populated_ledger), "--key", str(key_file))
        assert 2 == done.returncode
        assert secret_part not in done.stdout + done.stderr

    @pytest.mark.parametrize(
        "url",
        ["mysql://u:Pw1secretZ@h/db", "mysql://u:ab/Pw1secretZ@h/db", "redis://:Pw1secretZ@h"],
    )
    def test_unsupported_ledger_url_is_masked(self, url: str) -> None:
        """open_ledger() and the CLI name an unsupported URL with its password masked."""
        with pytest.raises(ConfigError) as caught:
            open_ledger(url)
        assert "Pw1secretZ" not in str(caught.value)
        assert "***" in str(caught.value)
        done = _cli("verify", "--ledger", url)
        assert 2 == done.returncode
        assert "Pw1secretZ" not in done.stdout + done.stderr

    def test_sqlite_url_with_credentials_is_masked(self) -> None:
        """A sqlite URL given a host and a password is refused without echoing the password."""
        with pytest.raises(ConfigError) as caught:
            open_ledger("sqlite://u:Pw1secretZ@host/x.db")
        assert "Pw1secretZ" not in str(caught.value)

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://etl:pw@db:5432/prod", "postgresql://etl:***@db:5432/prod"),
            ("mysql://u:p/w@h/db", "mysql://u:***@h/db"),
            ("mysql://u:p@w@h/db", "mysql://u:***@h/db"),
            ("postgresql://db/prod", "postgresql://db/prod"),
            ("sqlite:////var/lib/ledger.db", "sqlite:////var/lib/ledger.db"),
        ],
    )
    def test_masked_url(self, url: str, expected: str) -> None:
        """masked_url() hides the whole password, up to the last "@", and nothing else."""
        assert expected == masked_url(url)


class TestPostgresUrls:
    """PostgreSQL URLs: libpq's own messages echo what it could not parse."""

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://127.0.0.1:1/db?user=u&password=Pw1secretZ",
            "postgresql://u:Pw1secretZ@[::1/db",
            "postgresql://u:Pw1secretZ%zz@127.0.0.1:1/db",
            "postgresql://u:Pw1secretZ@x@127.0.0.1:1/db",
            "sqlite://u:Pw1secretZ@[x/db",
        ],
    )
    def test_no_password_in_any_error(self, url: str) -> None:
        """verify on an unreachable or malformed PostgreSQL URL exits 2 without a traceback
        and without any part of the password."""
        done = _cli("verify", "--ledger", url)
        assert 2 == done.returncode
        assert "Pw1secretZ" not in done.stdout + done.stderr
        assert "secretZ" not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr

    def test_masked_url_masks_a_query_password(self) -> None:
        """masked_url hides ?password= and &sslpassword= values too."""
        assert "postgresql://h/db?user=u&password=***&sslpassword=***" == masked_url(
            "postgresql://h/db?user=u&password=a&sslpassword=b"
        )


class TestReprsAndOtherMessages:
    """Configs, S3 URLs and signing-key specs never show a password or key material."""

    def test_config_repr_masks_the_ledger_password_and_the_key(self) -> None:
        """repr(AuditConfig) shows the ledger URL with its password masked and no key."""
        private = str(Signer.generate("ops.example/audit"))
        config = AuditConfig(ledger_url="postgresql://etl:Pw1/secretZ@db/prod", signing_key=private)
        shown = repr(config)
        assert "postgresql://etl:***@db/prod" in shown
        assert "Pw1" not in shown
        assert private.split("+", 4)[4] not in shown

    def test_config_repr_keeps_a_key_path(self) -> None:
        """A signing key given as a file path is shown: a path is no secret."""
        assert "signing_key='/secrets/audit.key'" in repr(
            AuditConfig(ledger_url="sqlite:///a.db", signing_key="/secrets/audit.key")
        )

    def test_s3_url_error_is_masked(self) -> None:
        """A non-s3 URL given as the bucket is refused without its password."""
        from audit_core.sinks.s3 import parse_s3_url

        with pytest.raises(ConfigError) as caught:
            parse_s3_url("https://key:Pw1secretZ@minio.internal/bucket")
        assert "Pw1secretZ" not in str(caught.value)

    def test_mistyped_private_key_is_not_echoed(self, tmp_path: Path) -> None:
        """A private key string with a typo is read as a path and refused without echoing it."""
        private = str(Signer.generate("ops.example/audit")).replace("PRIVATE", "PRIVAT", 1)
        with pytest.raises(ConfigError) as caught:
            load_signer(private, default_path=tmp_path / "k", name="x")
        assert private.split("+", 4)[4] not in str(caught.value)
        assert "not shown" in str(caught.value)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("workflow-audit")
    return subprocess.run(
        [str(script), *argv], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def populated_ledger(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger file with a few records and a checkpoint."""
    for i in range(3):
        trail.record("task.started", {"i": i})
    trail.close()
    return ledger_file
