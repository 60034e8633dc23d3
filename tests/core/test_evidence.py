"""The evidence pack: made from a real ledger, checked offline, and every tamper named."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core import _tamper
from tests.core._cli import Run
from tests.core._evidence import SINCE, UNTIL
from tests.core._evidence import entry as _entry
from tests.core._evidence import fill as _fill
from tests.core._evidence import ts as _ts


def _args(ledger: Path, out: Path, since: str = SINCE, until: str = UNTIL) -> list[str]:
    return [
        "evidence", "--ledger", f"sqlite:///{ledger}", "--since", since, "--until", until,
        "--sample", "25", "-o", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One ledger and, made once for the module, the pack of the period and one of a later
    period (each pack takes a second or two: most tests only read them)."""
    root = tmp_path_factory.mktemp("evidence")
    ledger = root / "ledger.db"
    _fill(ledger)
    pack, later = root / "pack.zip", root / "later.zip"
    assert main(_args(ledger, pack)) == 0
    assert main(_args(ledger, later, "2026-11-05", "2026-11-06")) == 0
    return ledger, pack, later


@pytest.fixture
def ledger(made: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """A copy of the module's ledger (with its keys) a test may change."""
    for path in made[0].parent.glob("ledger.db*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "ledger.db"


@pytest.fixture
def pack(made: tuple[Path, Path, Path]) -> Path:
    return made[1]


@pytest.fixture
def later(made: tuple[Path, Path, Path]) -> Path:
    return made[2]


def _key(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".key.pub")


def _make(cli: Any, ledger: Path, out: Path) -> Run:
    run: Run = cli(*_args(ledger, out))
    return run


def _verify(cli: Any, pack: Path, ledger: Path, *extra: str) -> Run:
    """verify-evidence --no-pdf (report.pdf's re-rendering is tested in test_evidence_check)."""
    run: Run = cli("verify-evidence", pack, "--key", _key(ledger), "--no-pdf", *extra)
    return run


def _rewrite(pack: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of ``pack`` with entries replaced (bytes) or removed (None)."""
    with zipfile.ZipFile(pack) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in change:
                body = change[info.filename]
                if body is not None:
                    dst.writestr(info, body)
            else:
                dst.writestr(info, src.read(info))
    return out


class TestMakeAndVerify:
    def test_pack_verifies_offline_and_states_the_period(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        # offline: the pack alone, away from the ledger and its key
        alone = tmp_path / "elsewhere"
        alone.mkdir()
        copy = shutil.copy(pack, alone / "pack.zip")
        key = shutil.copy(_key(ledger), alone / "verifier.pub")
        ledger.unlink()
        run = cli("verify-evidence", copy, "--key", key)
        assert run.code == 0, run.err
        assert "valid evidence pack" in run.out
        assert "verdict PASS" in run.out
        report = orjson.loads(_entry(Path(copy), "report.json"))
        chains = {c["chain"]: c for c in report["chains"]}
        # 30 airflow records a day on days 2 and 3; 2 event records a day
        assert chains["airflow"]["records"] == 60
        assert (chains["airflow"]["lo"], chains["airflow"]["hi"]) == (30, 90)
        assert chains["airflow-events"]["records"] == 4
        assert report["period"] == {
            "since": SINCE[:19] + ".000000Z",
            "until": UNTIL[:19] + ".000000Z",
            "days": 2.0,
        }

    def test_in_full_files_hold_every_failure_access_and_permission_record(
        self, pack: Path
    ) -> None:
        lines = {
            c: [orjson.loads(x) for x in _entry(pack, f"records/{c}.jsonl").splitlines()]
            for c in ("failure", "access", "permission", "erasure")
        }
        failed = sorted(x["leaf_index"] for x in lines["failure"])
        assert failed == [33, 43, 53, 63, 73, 83]  # i % 10 == 3 on days 2 and 3
        assert [orjson.loads(x["record"])["event"] for x in lines["access"]] == [
            "access.denied"
        ] * 2
        assert len(lines["permission"]) == 2
        assert lines["erasure"] == []

    def test_sample_indices_match_an_independent_computation(self, pack: Path) -> None:
        manifest = orjson.loads(_entry(pack, "manifest.json"))
        chain = next(c for c in manifest["chains"] if c["chain"] == "airflow")
        root = bytes.fromhex(chain["last_checkpoint"]["root"])
        lo, hi, n = chain["lo"], chain["hi"], chain["sample"]["n"]
        expected = [
            lo
            + int(hashlib.sha256(b"sample/v1" + root + i.to_bytes(8, "big")).hexdigest(), 16)
            % (hi - lo)
            for i in range(n)
        ]
        sample = _entry(pack, "proofs/airflow.sample.jsonl").splitlines()
        assert [orjson.loads(x)["leaf_index"] for x in sample] == expected

    def test_two_packs_of_one_period_are_identical_and_each_is_recorded(
        self, cli: Any, ledger: Path, pack: Path, tmp_path: Path
    ) -> None:
        again = tmp_path / "again.zip"
        assert _make(cli, ledger, again).code == 0
        assert pack.read_bytes() == again.read_bytes()
        exported = [
            orjson.loads(r.body)
            for r in SqliteLedger(ledger, read_only=True).read("audit")
            if b'"audit.exported"' in r.body
        ]
        assert len(exported) == 3  # the module's two packs, and this one
        assert exported[-1]["data"]["kind"] == "evidence"
        assert (
            exported[-1]["data"]["manifest_sha256"]
            == hashlib.sha256(_entry(pack, "manifest.json")).hexdigest()
        )

    def test_pack_holds_no_key_material(self, pack: Path, ledger: Path) -> None:
        private = ledger.with_name(ledger.name + ".key").read_text().strip()
        with zipfile.ZipFile(pack) as zf:
            for name in zf.namelist():
                body = zf.read(name)
                assert private.encode() not in body, name
                assert b"PRIVATE+KEY" not in body, name

    def test_controls_and_not_evidenced_are_stated(self, pack: Path) -> None:
        report = orjson.loads(_entry(pack, "report.json"))
        by_id = {c["id"]: c for c in report["controls"]}
        assert by_id["eu-ai-act-12-2-a"]["status"] == "evidenced"
        assert by_id["eu-ai-act-12-2-a"]["by_event"]["task.failed"] == 6
        # no --s3: retention is not evidenced, and the report says so
        assert by_id["nist-au-11"]["status"] == "not evidenced"
        assert "nist-au-11" in report["not_evidenced"]
        assert report["retention"]["verdict"] == "NOT CHECKED"


class TestTamperIsNamed:
    @pytest.mark.parametrize(
        "name",
        [
            "report.pdf",
            "report.json",
            "report.html",
            "transcript.txt",
            "records/failure.jsonl",
            "proofs/airflow.sample.jsonl",
            "checkpoints/airflow.last.note",
            "proofs/airflow.consistency.json",
        ],
    )
    def test_one_changed_byte_in_any_file(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, name: str
    ) -> None:
        body = bytearray(_entry(pack, name))
        body[len(body) // 2] ^= 0x01
        bad = _rewrite(pack, tmp_path / "bad.zip", {name: bytes(body)})
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert name in run.err
        assert "SHA-256" in run.err

    def test_changed_byte_in_the_zip_itself(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        raw = bytearray(pack.read_bytes())
        with zipfile.ZipFile(pack) as zf:
            info = zf.getinfo("records/failure.jsonl")
        # the local header is 30 bytes, then the name and the extra field (zip64 sizes)
        extra = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
        data = info.header_offset + 30 + len(info.filename) + extra
        raw[data + info.compress_size // 2] ^= 0x20
        bad = tmp_path / "flipped.zip"
        bad.write_bytes(bytes(raw))
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert "records/failure.jsonl" in run.err

    def test_manifest_changed_breaks_the_signature(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        manifest = _entry(pack, "manifest.json").replace(b'"PASS"', b'"PASS" ', 1)
        bad = _rewrite(pack, tmp_path / "bad.zip", {"manifest.json": manifest})
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert "manifest.sig" in run.err

    @pytest.mark.parametrize("name", ["records/access.jsonl", "proofs/airflow.sample.jsonl"])
    def test_removed_file(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, name: str
    ) -> None:
        bad = _rewrite(pack, tmp_path / "bad.zip", {name: None})
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert f"{name}: listed in the manifest but missing" in run.err

    def test_added_file(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        bad = _rewrite(pack, tmp_path / "bad.zip", {})
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr("records/extra.jsonl", b"{}\n")
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert "records/extra.jsonl: in the pack but not in the manifest" in run.err

    def test_another_periods_checkpoint_swapped_in(
        self, cli: Any, pack: Path, later: Path, ledger: Path, tmp_path: Path
    ) -> None:
        name = "checkpoints/airflow.last.note"
        other = _entry(later, name)
        assert other != _entry(pack, name)
        bad = _rewrite(pack, tmp_path / "bad.zip", {name: other})
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert name in run.err

    def test_another_packs_signature(
        self, cli: Any, pack: Path, later: Path, ledger: Path, tmp_path: Path
    ) -> None:
        bad = _rewrite(pack, tmp_path / "bad.zip", {"manifest.sig": _entry(later, "manifest.sig")})
        run = _verify(cli, bad, ledger)
        assert run.code == 1
        assert "manifest.sig: signed for another manifest or period" in run.err

    def test_wrong_key(self, cli: Any, pack: Path, tmp_path: Path) -> None:
        other = tmp_path / "other" / "ledger.db"
        other.parent.mkdir()
        with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{other}")) as trail:
            trail.record("task.started", {})
        run = cli("verify-evidence", pack, "--key", _key(other))
        assert run.code == 1
        assert "manifest.sig" in run.err

    def test_ledger_rewritten_after_the_pack(self, cli: Any, pack: Path, ledger: Path) -> None:
        assert _verify(cli, pack, ledger, "--ledger", f"sqlite:///{ledger}").code == 0
        # a record of the period edited, its hash and every later link recomputed
        _tamper.edit_body(ledger, "airflow", 40, lambda r: {**r, "data": {"i": -2}}, rehash=True)
        run = _verify(cli, pack, ledger, "--ledger", f"sqlite:///{ledger}")
        assert run.code == 1
        assert "ledger: chain 'airflow'" in run.err
        # the pack alone still verifies: it is the evidence of what the ledger held
        assert _verify(cli, pack, ledger).code == 0

    def test_a_pack_of_a_tampered_ledger_states_fail(
        self, cli: Any, ledger: Path, tmp_path: Path
    ) -> None:
        _tamper.edit_body(ledger, "airflow", 40, lambda r: {**r, "data": {"i": -1}})
        out = tmp_path / "fail.zip"
        run = _make(cli, ledger, out)
        assert run.code == 1
        assert "FAIL verification of chain 'airflow'" in run.err
        assert "40" in run.err
        verified = _verify(cli, out, ledger)
        assert verified.code == 1
        assert "states verdict 'FAIL'" in verified.err
        assert "line" in verified.err


class TestOperatorWithTheKey:
    """The operator holds the signing key: a pack re-signed after a failure record was taken
    out is caught against the ledger, by the record's seq."""

    def test_dropped_failure_record_is_caught_against_the_ledger(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        from audit_core._note import Signer, sign_note
        from audit_core.evidence.pack import manifest_note_text

        failures = _entry(pack, "records/failure.jsonl").splitlines(keepends=True)
        hidden = b"".join(failures[1:])
        manifest = orjson.loads(_entry(pack, "manifest.json"))
        manifest["files"]["records/failure.jsonl"] = hashlib.sha256(hidden).hexdigest()
        raw = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
        signer = Signer.parse(ledger.with_name(ledger.name + ".key").read_text())
        period = manifest["period"]
        note = sign_note(
            manifest_note_text(
                manifest["origin"],
                period["since"],
                period["until"],
                hashlib.sha256(raw).hexdigest(),
            ),
            [signer],
        )
        forged = _rewrite(
            pack,
            tmp_path / "forged.zip",
            {"records/failure.jsonl": hidden, "manifest.json": raw, "manifest.sig": note.encode()},
        )
        # offline: the sample (or the report's count) gives it away; the ledger names it
        assert _verify(cli, forged, ledger).code == 1
        run = _verify(cli, forged, ledger, "--ledger", f"sqlite:///{ledger}")
        assert run.code == 1
        seq = orjson.loads(failures[0])["leaf_index"]
        assert f"records/failure.jsonl: chain 'airflow' seqs [{seq}]" in run.err

    def test_a_chain_left_out_is_caught_against_the_ledger(
        self, cli: Any, ledger: Path, tmp_path: Path
    ) -> None:
        copy = tmp_path / "copy" / "ledger.db"
        copy.parent.mkdir()
        for path in ledger.parent.glob("ledger.db*"):
            shutil.copy(path, copy.parent / path.name)
        _tamper.delete_chain(copy, "airflow-events")  # the operator's copy, made to look whole
        assert _make(cli, copy, tmp_path / "p.zip").code == 0
        run = _verify(cli, tmp_path / "p.zip", ledger, "--ledger", f"sqlite:///{ledger}")
        assert run.code == 1
        assert (
            "chain 'airflow-events' has 4 records of the period and is not in the pack" in run.err
        )

    def test_a_later_checkpoint_steering_the_sample_is_caught(
        self, cli: Any, ledger: Path, tmp_path: Path
    ) -> None:
        copy = tmp_path / "copy" / "ledger.db"
        copy.parent.mkdir()
        for path in ledger.parent.glob("ledger.db*"):
            shutil.copy(path, copy.parent / path.name)
        with _tamper._tampering(copy) as conn:  # hide the checkpoint the rule would pick
            conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
            conn.execute("DELETE FROM checkpoints WHERE chain = 'airflow' AND size = 90")
        assert _make(cli, copy, tmp_path / "p.zip").code == 0
        run = _verify(cli, tmp_path / "p.zip", ledger, "--ledger", f"sqlite:///{ledger}")
        assert run.code == 1
        assert "the pack's checkpoints are at sizes (30, 120), the rule picks (30, 90)" in run.err

    def test_a_chain_claimed_empty_is_caught_against_the_ledger(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        from tests.core.test_evidence_check import _resign

        def empty(m: dict[str, Any]) -> None:
            c = next(c for c in m["chains"] if c["chain"] == "airflow-events")
            c.update(records=0, lo=0, hi=0, first_checkpoint=None, last_checkpoint=None)

        forged = _resign(pack, ledger, tmp_path / "f.zip", manifest=empty)
        run = _verify(cli, forged, ledger, "--ledger", f"sqlite:///{ledger}")
        assert run.code == 1
        assert "chain 'airflow-events' has 4 records of the period (seqs [2, 6)); the pack" in (
            run.err
        )

    def test_an_honest_pack_is_derived_again(self, cli: Any, pack: Path, ledger: Path) -> None:
        run = _verify(cli, pack, ledger, "--ledger", f"sqlite:///{ledger}", "-v")
        assert run.code == 0, run.err
        assert "control counts derived again" in run.out


class TestBadInput:
    @pytest.mark.parametrize(
        "content", [b"", b"not a zip", b"PK\x03\x04" + b"\x00" * 40], ids=["empty", "text", "stub"]
    )
    def test_not_a_pack(self, cli: Any, ledger: Path, tmp_path: Path, content: bytes) -> None:
        path = tmp_path / "junk.zip"
        path.write_bytes(content)
        run = _verify(cli, path, ledger)
        assert run.code == 1
        assert "INVALID evidence pack" in run.err
        assert "Traceback" not in run.err

    def test_zip_without_manifest(self, cli: Any, ledger: Path, tmp_path: Path) -> None:
        path = tmp_path / "other.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("report.pdf", b"%PDF")
        run = _verify(cli, path, ledger)
        assert run.code == 1
        assert "no manifest.json" in run.err

    def test_missing_pack_and_bad_arguments(self, cli: Any, ledger: Path, tmp_path: Path) -> None:
        assert _verify(cli, tmp_path / "nope.zip", ledger).code == 2
        assert _verify(cli, tmp_path, ledger).code == 2
        run = cli("evidence", "--ledger", f"sqlite:///{ledger}", "--since", "2026-11-04",
                  "--until", "2026-11-02")  # fmt: skip
        assert run.code == 2
        assert "not after" in run.err
        run = cli("evidence", "--ledger", f"sqlite:///{ledger}", "--since", "yesterday")
        assert run.code == 2

    def test_ledger_without_checkpoints_is_signed_first(self, cli: Any, tmp_path: Path) -> None:
        path = tmp_path / "fresh.db"
        config = AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0)
        with AuditTrail(config) as trail:
            trail.record("task.failed", {}, ts=_ts(2, 1))
        assert not SqliteLedger(path, read_only=True).checkpoints("default")
        run = _make(cli, path, tmp_path / "p.zip")
        assert run.code == 0, run.err
        assert _verify(cli, tmp_path / "p.zip", path).code == 0

    def test_usage_errors_write_nothing(self, ledger: Path, cli: Any, tmp_path: Path) -> None:
        before = SqliteLedger(ledger, read_only=True).tree_head("audit")
        for bad in (["--s3", "https://bucket/prefix"], ["--reconcile", "no-such-orchestrator"]):
            run = cli(*_args(ledger, tmp_path / "p.zip"), *bad)
            assert run.code == 2, run.err
        assert SqliteLedger(ledger, read_only=True).tree_head("audit") == before
        assert not (tmp_path / "p.zip").exists()

    @pytest.mark.parametrize("suffix", ["", "-wal", ".key", ".key.pub"])
    def test_output_never_replaces_the_ledger_or_its_key(
        self, cli: Any, ledger: Path, suffix: str
    ) -> None:
        target = ledger.with_name(ledger.name + suffix)
        target.touch()
        before = target.read_bytes()
        run = cli(*_args(ledger, target), "--force")
        assert run.code == 2
        assert "file of the ledger or its key" in run.err
        assert target.read_bytes() == before

    def test_output_never_replaces_a_ledger_named_as_a_plain_path(
        self, cli: Any, ledger: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        before = ledger.read_bytes()
        args = ["evidence", "--since", SINCE, "--until", UNTIL, "--force"]
        run = cli(*args, "--ledger", str(ledger), "-o", str(ledger))
        assert run.code == 2, run.err
        monkeypatch.chdir(ledger.parent)  # $WORKFLOW_AUDIT_LEDGER, and a relative -o
        monkeypatch.setenv("WORKFLOW_AUDIT_LEDGER", str(ledger))
        run = cli(*args, "-o", f"./{ledger.name}.key")
        assert run.code == 2
        assert "file of the ledger or its key" in run.err
        assert ledger.read_bytes() == before

    def test_a_record_stored_as_text_is_a_finding_not_a_traceback(
        self, cli: Any, ledger: Path, tmp_path: Path
    ) -> None:
        _tamper.cast_column(ledger, "airflow", 40, "body")
        run = _make(cli, ledger, tmp_path / "p.zip")
        assert run.code == 1, run.err
        assert "FAIL verification of chain 'airflow'" in run.err

    def test_existing_output_needs_force(self, cli: Any, ledger: Path, tmp_path: Path) -> None:
        out = tmp_path / "p.zip"
        out.write_bytes(b"precious")
        run = cli(*_args(ledger, out))
        assert run.code == 2
        assert "--force" in run.err
        assert out.read_bytes() == b"precious"
        assert cli(*_args(ledger, out), "--force").code == 0
        assert zipfile.is_zipfile(out)
        run = cli(*_args(ledger, tmp_path))  # a directory
        assert run.code == 2
        assert "not a regular file" in run.err

    @pytest.mark.parametrize(
        ("since", "until", "said"),
        [
            ("2026-11-10", "2026-11-11", "no records"),
            ("2026-11-02", "2999-01-01", "in the future"),
        ],
    )
    def test_nothing_or_not_yet_to_evidence(
        self, cli: Any, ledger: Path, tmp_path: Path, since: str, until: str, said: str
    ) -> None:
        run = cli(*_args(ledger, tmp_path / "p.zip", since, until))
        assert run.code == 2
        assert said in run.err
        assert not (tmp_path / "p.zip").exists()
        assert not list(tmp_path.glob(".evidence-*"))

    def test_unknown_chain(self, cli: Any, ledger: Path, tmp_path: Path) -> None:
        run = cli(*_args(ledger, tmp_path / "p.zip"), "--chain", "nope")
        assert run.code == 2
        assert "no chain 'nope'" in run.err

    def test_a_rotated_key_still_verifies_older_checkpoints(
        self, cli: Any, ledger: Path, tmp_path: Path
    ) -> None:
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", actor=("service", "tests"))
        ledger.with_name(ledger.name + ".key").unlink()  # lost: rotated on purpose
        with AuditTrail(config) as trail:
            trail.rotate_key = True
            trail.record("task.succeeded", {}, ts=_ts(3, 59), chain="airflow")
            trail.checkpoint("airflow")
        run = cli(*_args(ledger, tmp_path / "p.zip"))
        assert run.code == 0, run.err
        assert len(_key(ledger).read_text().split()) == 2
        assert _verify(cli, tmp_path / "p.zip", ledger).code == 0

    def test_ledger_without_checkpoints(self, cli: Any, tmp_path: Path) -> None:
        path = tmp_path / "bare.db"
        config = AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0)
        with AuditTrail(config) as trail:
            trail.record("task.started", {}, ts=_ts(2, 1))
        for p in tmp_path.glob("bare.db.key*"):
            p.unlink()
        run = cli("evidence", "--ledger", f"sqlite:///{path}", "--since", SINCE,
                  "--no-checkpoint", "-o", tmp_path / "p.zip")  # fmt: skip
        assert run.code == 2
        assert "no chain of this ledger has a signed checkpoint" in run.err
        assert not (tmp_path / "p.zip").exists()
