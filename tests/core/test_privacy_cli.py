"""`workflow-audit privacy …` operated like a hostile user: claims checked, bad input of every
kind answered with a clear message and exit 2 (never a traceback), and the trail failing
closed when its store cannot be written."""

from __future__ import annotations

import logging
import os
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._metrics import COUNTERS
from audit_core.errors import PolicyError
from audit_core.ledgers import masked_url
from tests.core._cli import Run
from tests.core.test_privacy import bodies, records, run_cli

ALICE = "alice-Wq3e"
BOB = "bob-Pz8r"
EMAIL = "alice-Wq3e@mail.example"
PASSWORD = "s3cret-pw-Xy"  # noqa: S105 - must never be printed


def _fill(ledger: Path) -> None:
    """Two records of ALICE (seq 0: triggering_user, actor and conf email; seq 1:
    triggering_user) and one of BOB (seq 2)."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{ledger}", privacy_policy="default", actor=("service", "t")
    )
    with AuditTrail(config) as trail:
        trail.record(
            "dagrun.started",
            {"triggering_user": ALICE, "conf": {"email": EMAIL}},
            actor=("user", ALICE),
        )
        trail.record("dagrun.started", {"triggering_user": ALICE})
        trail.record("dagrun.started", {"triggering_user": BOB}, actor=("user", BOB))


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A fresh ledger filled by _fill, with its store and key file beside it."""
    path = tmp_path / "l.db"
    _fill(path)
    return path


def _claim(cli: Any, ledger: Path, seq: int, pointer: str, value: str) -> Run:
    run: Run = cli(
        "privacy", "verify", "--ledger", ledger, "--chain", "default", "--seq", str(seq),
        "--pointer", pointer, "--value", value,
    )  # fmt: skip
    return run


def _clean(run: Run, *secrets: str) -> None:
    """No traceback, and none of ``secrets`` in what was printed."""
    text = run.out + run.err
    assert "Traceback" not in text
    assert [] == [s for s in secrets if s in text]


class TestClaims:
    """`privacy verify --seq --pointer --value`: an auditor checks an asserted value."""

    def test_true_value_matches(self, cli: Any, ledger: Path) -> None:
        """The committed value: MATCH, exit 0."""
        run = _claim(cli, ledger, 0, "/data/triggering_user", f'"{ALICE}"')
        assert 0 == run.code, run.err
        assert run.out.startswith("MATCH")

    @pytest.mark.parametrize(
        ("pointer", "value"),
        [
            ("/data/triggering_user", f'"{BOB}"'),
            ("/data/triggering_user", f'"{ALICE} "'),
            ("/data/conf/email", f'"{ALICE}"'),  # the right value at another pointer
            ("/actor/id", f'"{EMAIL}"'),
            ("/data/conf/email", f'["{EMAIL}"]'),  # the right text in another JSON type
        ],
    )
    def test_false_value_does_not_match(
        self, cli: Any, ledger: Path, pointer: str, value: str
    ) -> None:
        """Another value, or the value at another pointer or in another type: NO MATCH,
        exit 1, and the output does not echo the claimed value."""
        run = _claim(cli, ledger, 0, pointer, value)
        assert 1 == run.code
        assert run.out.startswith("NO MATCH")
        _clean(run, EMAIL, BOB)

    def test_reads_of_personal_data_are_recorded(self, cli: Any, ledger: Path) -> None:
        """open, a claim and verify each append one audit.* record on the audit chain: the
        fields opened and the claim's answer, never a value nor the claimed one."""
        before = len(records(ledger, "audit"))
        assert (
            0 == cli("privacy", "open", "--ledger", ledger, "--chain", "default", "--seq", "0").code
        )
        assert 1 == _claim(cli, ledger, 0, "/data/triggering_user", f'"{BOB}"').code
        assert 0 == cli("privacy", "verify", "--ledger", ledger).code
        reads = records(ledger, "audit")[before:]
        assert ["audit.opened", "audit.opened", "audit.verified"] == [r["event"] for r in reads]
        opened, claimed, verified = (r["data"] for r in reads)
        assert ("open", "default", 0) == (opened["privacy"], opened["chain"], opened["seq"])
        assert "/data/triggering_user" in opened["fields"]
        assert ("claim", "mismatch", ["/data/triggering_user"]) == (
            claimed["privacy"],
            claimed["answer"],
            claimed["fields"],
        )
        assert "verify" == verified["privacy"]
        text = orjson.dumps(reads).decode()
        assert [] == [v for v in (ALICE, BOB, EMAIL) if v in text]

    def test_text_form_actor_matches(self, cli: Any, ledger: Path) -> None:
        """The actor id (committed in its text form) checks like any other field."""
        assert 0 == _claim(cli, ledger, 0, "/actor/id", f'"{ALICE}"').code
        assert 0 == _claim(cli, ledger, 0, "/data/conf/email", f'"{EMAIL}"').code

    def test_after_erasure_not_checked(self, cli: Any, ledger: Path) -> None:
        """After ALICE's erasure the true value cannot be confirmed: NOT CHECKED, exit 3;
        BOB's still can."""
        assert 0 == cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t").code
        run = _claim(cli, ledger, 0, "/data/triggering_user", f'"{ALICE}"')
        assert 3 == run.code
        expected = (
            "NOT CHECKED: default:0 /data/triggering_user can no longer be opened (erased, or "
            "its opening was never stored)\n"
        )
        assert expected == run.out
        assert 0 == _claim(cli, ledger, 2, "/data/triggering_user", f'"{BOB}"').code

    @pytest.mark.parametrize(
        ("value", "code", "status"),
        [(f'"{ALICE}"', 0, "match"), ('"mallory"', 1, "mismatch")],
    )
    def test_claim_json(self, cli: Any, ledger: Path, value: str, code: int, status: str) -> None:
        """--json: {"match": bool, "status": …} and the same exit code as the text form."""
        run = cli(
            "privacy", "verify", "--ledger", ledger, "--chain", "default", "--seq", "1",
            "--pointer", "/data/triggering_user", "--value", value, "--json",
        )  # fmt: skip
        assert code == run.code
        assert {"match": code == 0, "status": status} == orjson.loads(run.out)

    def test_claim_json_after_erasure(self, cli: Any, ledger: Path) -> None:
        """--json after the erasure: {"match": false, "status": "unavailable"}, exit 3."""
        assert 0 == cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t").code
        run = cli(
            "privacy", "verify", "--ledger", ledger, "--chain", "default", "--seq", "1",
            "--pointer", "/data/triggering_user", "--value", f'"{ALICE}"', "--json",
        )  # fmt: skip
        assert (3, {"match": False, "status": "unavailable"}) == (run.code, orjson.loads(run.out))

    def test_copied_commitment_is_foreign(self, cli: Any, ledger: Path) -> None:
        """A commitment copied into another record (its nonce not that record's): NO MATCH,
        exit 1, status foreign, even for the true value."""
        config = AuditConfig(
            ledger_url=f"sqlite:///{ledger}", privacy_policy="default", actor=("service", "t")
        )
        with AuditTrail(config) as trail:
            real = trail.record("access.denied", {"user": ALICE, "status": 403})
            marker = orjson.loads(real.body)["data"]["user"]
            forged = trail.record("note.added", {"user": marker, "mine": ALICE})
        run = cli(
            "privacy", "verify", "--ledger", ledger, "--chain", "default",
            "--seq", str(forged.seq), "--pointer", "/data/user", "--value", f'"{ALICE}"',
            "--json",
        )  # fmt: skip
        assert (1, {"match": False, "status": "foreign"}) == (run.code, orjson.loads(run.out))

    @pytest.mark.parametrize("seq", ["-1", str(2**63), "x"])
    def test_seq_out_of_range(self, cli: Any, ledger: Path, seq: str) -> None:
        """--seq outside 0..2**63-1 (or not a number): a usage error, exit 2."""
        run = cli(
            "privacy", "verify", "--ledger", ledger, "--chain", "default", "--seq", seq,
            "--pointer", "/data/triggering_user", "--value", '"x"',
        )  # fmt: skip
        assert 2 == run.code
        assert "a seq is" in run.err
        _clean(run)

    def test_exit_codes_in_a_subprocess(self, ledger: Path) -> None:
        """The real executable exits 0 for MATCH and 1 for NO MATCH."""
        base = ["privacy", "verify", "--ledger", ledger, "--chain", "default", "--seq", "1"]
        base += ["--pointer", "/data/triggering_user", "--value"]
        assert 0 == run_cli(*base, f'"{ALICE}"').returncode
        run = run_cli(*base, '"mallory"')
        assert 1 == run.returncode
        assert "Traceback" not in run.stderr

    def test_open_shows_values_then_unavailable(self, cli: Any, ledger: Path) -> None:
        """`privacy open` lists the record's values (exit 0); after the erasure each is
        unavailable (still exit 0) and no value is printed."""
        args = ("privacy", "open", "--ledger", ledger, "--chain", "default", "--seq", "0")
        run = cli(*args, "--json")
        assert 0 == run.code
        opened = {o["pointer"]: o for o in orjson.loads(run.out)}
        assert EMAIL == opened["/data/conf/email"]["value"]
        assert {"ok"} == {o["status"] for o in opened.values()}
        assert 0 == cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t").code
        run = cli(*args, "--json")
        assert 0 == run.code
        assert {"unavailable"} == {o["status"] for o in orjson.loads(run.out)}
        _clean(run, ALICE, EMAIL)


class TestErase:
    """`privacy erase`: unknown subjects, repeats, status."""

    def test_unknown_subject_exit_2_nothing_appended(self, cli: Any, ledger: Path) -> None:
        """A subject that never existed: exit 2, a clear error, no record appended."""
        before = bodies(ledger)
        run = cli("privacy", "erase", "never-was", "--ledger", ledger, "--reason", "t")
        assert 2 == run.code
        assert "no data subject" in run.err
        store = masked_url(f"sqlite:///{ledger.with_name(ledger.name + '.privacy.db')}")
        assert run.err.rstrip().endswith(f"(store {store})"), run.err
        _clean(run, "never-was")
        assert before == bodies(ledger)

    def test_second_erase_exit_2(self, cli: Any, ledger: Path) -> None:
        """Erasing the same subject twice: the second exits 2, appending nothing."""
        assert 0 == cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t").code
        before = bodies(ledger)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t")
        assert 2 == run.code
        _clean(run, ALICE)
        assert before == bodies(ledger)

    def test_erase_json_and_status(self, cli: Any, ledger: Path) -> None:
        """--json: the pseudonym, counts and the record (finished_pending 0); status then
        counts one erasure done, BOB's subject and the CLI's process actor (USER@HOST, the
        erasure record's committed actor) left."""
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t", "--json")
        assert 0 == run.code
        doc = orjson.loads(run.out)
        assert (2, 4, 0) == (doc["records"], doc["values"], doc["finished_pending"])
        assert "audit" == doc["record"]["chain"]
        _clean(run, ALICE)
        (erased,) = [r for r in records(ledger, "audit") if r["event"] == "privacy.erased"]
        assert "process" == erased["actor"]["type"]
        assert erased["actor"]["id"].startswith("$commit:hmac-sha256/v1:")
        status = orjson.loads(cli("privacy", "status", "--ledger", ledger, "--json").out)
        assert [] == status["pending"]
        assert {"subjects": 2, "erasures_done": 1, "erasures_pending": 0} == {
            k: status["store"][k] for k in ("subjects", "erasures_done", "erasures_pending")
        }

    def test_a_new_record_after_erasure_gets_a_new_pseudonym(self, cli: Any, ledger: Path) -> None:
        """ALICE recorded again after the erasure: a new pseudonym; the new record opens, the
        old ones stay unavailable."""
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t", "--json")
        old = orjson.loads(run.out)["erased"]
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", privacy_policy="default")
        with AuditTrail(config) as trail:
            seq = trail.record("dagrun.started", {"triggering_user": ALICE}).seq
        assert 0 == _claim(cli, ledger, seq, "/data/triggering_user", f'"{ALICE}"').code
        assert 3 == _claim(cli, ledger, 1, "/data/triggering_user", f'"{ALICE}"').code
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t", "--json")
        assert old != orjson.loads(run.out)["erased"]

    def test_erase_while_another_trail_is_open(self, cli: Any, ledger: Path) -> None:
        """A trail open across another process's erasure of ALICE records her again under a
        new pseudonym: the new record opens, the old ones do not."""
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", privacy_policy="default")
        with AuditTrail(config) as trail:
            trail.record("dagrun.started", {"triggering_user": ALICE})  # store and keys open
            run = run_cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t")
            assert 0 == run.returncode, run.stderr
            seq = trail.record("dagrun.started", {"triggering_user": ALICE}).seq
        assert 0 == _claim(cli, ledger, seq, "/data/triggering_user", f'"{ALICE}"').code
        assert 3 == _claim(cli, ledger, seq - 1, "/data/triggering_user", f'"{ALICE}"').code
        run = cli("privacy", "verify", "--ledger", ledger, "--json")
        assert 0 == run.code
        counts = orjson.loads(run.out)["counts"]
        # ok: BOB 2, the new one and the erasure record's operator (process USER@HOST, a
        # privacy.* event); the trail's own process actor is not committed; unavailable:
        # ALICE's 5
        assert (4, 5) == (counts["ok"], counts["unavailable"])

    def test_reason_naming_the_subject_is_refused(self, cli: Any, ledger: Path) -> None:
        """`privacy erase ALICE --reason "ALICE asked"`: refused (exit 2), nothing appended,
        so the erasure record cannot re-identify whom it erased."""
        before = bodies(ledger)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", f"{ALICE} asked")
        assert 2 == run.code
        assert before == bodies(ledger)

    @pytest.mark.parametrize(
        "reason", [f"{ALICE.upper()} asked", f"per ({ALICE})", f"ticket 9: {ALICE}"]
    )
    def test_reason_naming_the_subject_any_case_refused(
        self, cli: Any, ledger: Path, reason: str
    ) -> None:
        """The identifier as a whole word of --reason, in any case: refused, exit 2."""
        before = bodies(ledger)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", reason)
        assert 2 == run.code
        assert "--reason names the data subject" in run.err
        assert before == bodies(ledger)

    def test_basis_naming_the_subject_refused(self, cli: Any, ledger: Path) -> None:
        """--basis naming the subject is refused like --reason."""
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t",
                  "--basis", f"consent of {ALICE}")  # fmt: skip
        assert 2 == run.code
        assert "--basis names the data subject" in run.err

    def test_identifier_inside_a_longer_word_is_allowed(self, cli: Any, ledger: Path) -> None:
        """The identifier only as part of a longer word is not a naming: erased, exit 0."""
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", f"x{ALICE}y")
        assert 0 == run.code, run.err

    def test_short_identifier_not_checked_in_reason(self, cli: Any, tmp_path: Path) -> None:
        """A 2-character identifier is not looked for in --reason ("ed" in "approved")."""
        ledger = tmp_path / "l.db"
        config = AuditConfig(
            ledger_url=f"sqlite:///{ledger}", privacy_policy="default", actor=("service", "t")
        )
        with AuditTrail(config) as trail:
            trail.record("dagrun.started", {"triggering_user": "ed"})
        run = cli("privacy", "erase", "ed", "--ledger", ledger, "--reason", "ed approved")
        assert 0 == run.code, run.err

    @pytest.mark.parametrize("reason", [None, "", "   "])
    def test_reason_required_with_a_subject(
        self, cli: Any, ledger: Path, reason: str | None
    ) -> None:
        """A SUBJECT without --reason (or an empty one): exit 2, nothing appended."""
        before = bodies(ledger)
        extra = () if reason is None else ("--reason", reason)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, *extra)
        assert 2 == run.code
        assert "--reason is required" in run.err
        assert before == bodies(ledger)

    @pytest.mark.parametrize(
        "args", [(), (ALICE, "--reason", "t", "--finish"), ("--finish", "--reason", "t", ALICE)]
    )
    def test_subject_xor_finish(self, cli: Any, ledger: Path, args: tuple[str, ...]) -> None:
        """Neither SUBJECT nor --finish, or both: exit 2, saying which to give."""
        before = bodies(ledger)
        run = cli("privacy", "erase", *args, "--ledger", ledger)
        assert 2 == run.code
        assert "give a SUBJECT (with --reason), or --finish alone" in run.err
        assert before == bodies(ledger)

    def test_finish_with_nothing_pending(self, cli: Any, ledger: Path) -> None:
        """--finish alone with nothing pending: exit 0, says so, appends nothing."""
        before = bodies(ledger)
        run = cli("privacy", "erase", "--finish", "--ledger", ledger)
        assert (0, "no erasure was pending; the store is compacted\n") == (run.code, run.out)
        assert before == bodies(ledger)

    @pytest.mark.parametrize("missing", [".privacy.db", ".privacy-keys.db"])
    def test_no_store_no_erase(self, cli: Any, ledger: Path, missing: str) -> None:
        """A ledger whose store (or key file) is not there: exit 2, "no privacy store at"
        naming the file; neither file is created, nothing appended."""
        gone = ledger.with_name(ledger.name + missing)
        gone.unlink()
        before = bodies(ledger)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t")
        assert 2 == run.code
        what = "privacy store" if missing == ".privacy.db" else "key store"
        assert f"no {what} at {gone}: this ledger was never written with a privacy policy" in (
            run.err
        )
        assert not gone.exists()
        assert before == bodies(ledger)

    def test_ledger_without_policy_has_no_store(self, cli: Any, tmp_path: Path) -> None:
        """A ledger never written with a policy: erase exits 2, creating no store."""
        ledger = tmp_path / "l.db"
        with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger}")) as trail:
            trail.record("dagrun.started", {"triggering_user": ALICE})
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t")
        assert 2 == run.code
        assert "no privacy store at" in run.err
        assert not ledger.with_name("l.db.privacy.db").exists()
        assert not ledger.with_name("l.db.privacy-keys.db").exists()

    def test_lost_key_still_erased(self, cli: Any, ledger: Path) -> None:
        """A subject whose key is already gone from the key file: erased anyway (exit 0),
        key check value "unavailable (key lost)"."""
        from audit_core.privacy.store import PrivacyStore

        store = PrivacyStore(f"sqlite:///{ledger}.privacy.db", read_only=True)
        try:
            pseudonym = store.pseudonym(ALICE)
        finally:
            store.close()
        conn = sqlite3.connect(ledger.with_name(ledger.name + ".privacy-keys.db"))
        with conn:
            conn.execute("DELETE FROM keys WHERE pseudonym = ?", (pseudonym,))
        conn.close()
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t", "--json")
        assert 0 == run.code, run.err
        doc = orjson.loads(run.out)
        assert (pseudonym, "unavailable (key lost)") == (doc["erased"], doc["key_check_value"])
        (erased,) = [r for r in records(ledger, "audit") if r["event"] == "privacy.erased"]
        assert "unavailable (key lost)" == erased["data"]["key_check_value"]

    def test_identifier_as_recorded_in_nfd_is_erased(self, cli: Any, tmp_path: Path) -> None:
        """A username recorded in decomposed form (NFD) is erased by that same string."""
        nfd = unicodedata.normalize("NFD", "José-Ünal")
        ledger = tmp_path / "l.db"
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", privacy_policy="default")
        with AuditTrail(config) as trail:
            trail.record("dagrun.started", {"triggering_user": nfd})
        run = cli("privacy", "erase", nfd, "--ledger", ledger, "--reason", "t")
        assert 0 == run.code, run.err


class TestBadInput:
    """Every privacy command given bad input: a message, exit 2, no traceback."""

    @pytest.mark.parametrize(
        "args",
        [
            ("verify",),
            ("open", "--chain", "default", "--seq", "0"),
            ("status",),
            ("erase", ALICE, "--reason", "t"),
        ],
    )
    def test_missing_ledger(self, cli: Any, tmp_path: Path, args: tuple[str, ...]) -> None:
        """A ledger (and store) that is not there: exit 2 and a message."""
        run = cli("privacy", *args, "--ledger", f"sqlite:///{tmp_path}/none/l.db")
        assert 2 == run.code
        assert "error:" in run.err
        _clean(run)
        assert not (tmp_path / "none").exists()

    @pytest.mark.parametrize(
        "where", [("--chain", "nochain", "--seq", "0"), ("--chain", "default", "--seq", "99")]
    )
    def test_unknown_chain_or_seq(self, cli: Any, ledger: Path, where: tuple[str, ...]) -> None:
        """open and a claim of a record that is not there: exit 2, naming chain and seq."""
        run = cli("privacy", "open", "--ledger", ledger, *where)
        assert 2 == run.code
        assert f"no record {where[3]}" in run.err
        claim = ("--pointer", "/data/triggering_user", "--value", '"x"')
        run = cli("privacy", "verify", "--ledger", ledger, *where, *claim)
        assert 2 == run.code
        _clean(run)

    @pytest.mark.parametrize("value", ["{bad", "alice", "", "'x'"])
    def test_value_not_json(self, cli: Any, ledger: Path, value: str) -> None:
        """--value that is not JSON: exit 2 with how to write a string."""
        run = _claim(cli, ledger, 0, "/data/triggering_user", value)
        assert 2 == run.code
        assert "--value is JSON" in run.err
        _clean(run)

    def test_claim_needs_all_its_options(self, cli: Any, ledger: Path) -> None:
        """--seq without --pointer/--value, or without exactly one --chain: exit 2."""
        run = cli("privacy", "verify", "--ledger", ledger, "--seq", "0")
        assert 2 == run.code
        run = cli("privacy", "verify", "--ledger", ledger, "--seq", "0", "--pointer", "/x",
                  "--value", "1")  # fmt: skip
        assert 2 == run.code
        assert "--chain" in run.err
        _clean(run)

    @pytest.mark.parametrize("pointer", ["/data/nothing", "/data/_privacy/policy", "/data"])
    def test_claim_where_nothing_is_committed(self, cli: Any, ledger: Path, pointer: str) -> None:
        """A pointer where the record holds no commitment: exit 2, saying so."""
        run = _claim(cli, ledger, 0, pointer, '"x"')
        assert 2 == run.code
        assert f"workflow-audit: error: default:0 holds no commitment at {pointer}\n" == run.err
        assert "" == run.out
        _clean(run)

    def test_claim_pointer_not_a_pointer(self, cli: Any, ledger: Path) -> None:
        """A --pointer not starting with '/': exit 2, saying what a pointer is."""
        run = _claim(cli, ledger, 0, "data/triggering_user", '"x"')
        assert 2 == run.code
        assert "--pointer is a JSON pointer starting with '/'" in run.err
        _clean(run)

    @pytest.mark.parametrize(
        "args",
        [
            ("verify",),
            ("open", "--chain", "default", "--seq", "0"),
            ("status",),
            ("erase", ALICE, "--reason", "t"),
        ],
    )
    def test_unreachable_postgres_store(
        self, cli: Any, ledger: Path, args: tuple[str, ...]
    ) -> None:
        """A PostgreSQL store nobody listens for: exit 2, the URL masked, never the password;
        the erase appends nothing."""
        before = bodies(ledger)
        url = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"
        run = cli("privacy", *args, "--ledger", ledger, "--store", url)
        assert 2 == run.code
        assert "127.0.0.1" in run.err
        _clean(run, PASSWORD, ALICE)
        assert before == bodies(ledger)

    def test_unreachable_store_in_a_subprocess_via_env(self, ledger: Path) -> None:
        """The same, configured by WORKFLOW_AUDIT_PRIVACY_STORE, in the real executable."""
        env = {"WORKFLOW_AUDIT_PRIVACY_STORE": f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"}
        run = run_cli("privacy", "verify", "--ledger", ledger, env=env)
        assert 2 == run.returncode
        assert "Traceback" not in run.stderr
        assert PASSWORD not in run.stdout + run.stderr

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
    def test_group_or_world_key_file_refused_for_erase(
        self, cli: Any, ledger: Path, mode: int
    ) -> None:
        """A writer's key file open to group or world: erase refused (exit 2), chmod 600
        named, nothing appended."""
        keys = ledger.with_name(ledger.name + ".privacy-keys.db")
        keys.chmod(mode)
        before = bodies(ledger)
        run = cli("privacy", "erase", ALICE, "--ledger", ledger, "--reason", "t")
        assert 2 == run.code
        assert (
            f"key store {keys} is open to group or world (mode {mode:o}): run chmod 600 {keys}"
            in run.err
        )
        _clean(run, ALICE)
        assert before == bodies(ledger)

    @pytest.mark.parametrize("mode", [0o644, 0o604, 0o600 | 0o001])
    def test_world_readable_key_file_refused_for_readers(
        self, cli: Any, ledger: Path, mode: int
    ) -> None:
        """A read-only open refuses a key file with any world bit, saying to copy it."""
        keys = ledger.with_name(ledger.name + ".privacy-keys.db")
        keys.chmod(mode)
        run = cli("privacy", "verify", "--ledger", ledger)
        assert 2 == run.code
        assert f"key store {keys} is open to the world (mode {mode:o}): copy it to a file" in (
            run.err
        )
        assert "only you (or your group) can read" in run.err
        _clean(run, ALICE)

    @pytest.mark.parametrize("mode", [0o640, 0o440, 0o400])
    def test_group_readable_key_file_read(self, cli: Any, ledger: Path, mode: int) -> None:
        """An auditor's copy shared with a group (0640/0440) opens for reading: verify 0."""
        keys = ledger.with_name(ledger.name + ".privacy-keys.db")
        keys.chmod(mode)
        run = cli("privacy", "verify", "--ledger", ledger)
        assert 0 == run.code, run.err

    @pytest.mark.parametrize("which", ["--store", "--keys"])
    def test_directory_as_store_or_keys(self, cli: Any, ledger: Path, which: str) -> None:
        """A directory given as the store or the key file: exit 2, "is a directory"."""
        folder = ledger.with_name("a-dir")
        folder.mkdir()
        url = f"sqlite:///{folder}" if which == "--store" else str(folder)
        run = cli("privacy", "verify", "--ledger", ledger, which, url)
        assert 2 == run.code
        assert "is a directory, not a file" in run.err
        _clean(run)

    def test_unknown_store_and_key_schemes(self, cli: Any, ledger: Path) -> None:
        """ftp:// store, vault:// keys without a plugin: exit 2 and what is expected."""
        run = cli("privacy", "verify", "--ledger", ledger, "--store", "ftp://x")
        assert 2 == run.code
        assert "sqlite:///" in run.err
        run = cli("privacy", "verify", "--ledger", ledger, "--keys", "vault://x")
        assert 2 == run.code
        assert "docs/PRIVACY.md" in run.err
        _clean(run)

    def test_unknown_chain_in_bulk_verify(self, cli: Any, ledger: Path) -> None:
        """`privacy verify --chain typo`: exit 2 (a typo must not read as VALID)."""
        run = cli("privacy", "verify", "--ledger", ledger, "--chain", "defualt")
        assert 2 == run.code, run.out

    def test_store_inside_the_ledger_file_refused(self, cli: Any, ledger: Path) -> None:
        """--store naming the ledger's own file: exit 2, and the ledger gets no privacy
        tables (the erasable store must never live in the ledger file)."""
        run = cli("privacy", "erase", BOB, "--ledger", ledger, "--reason", "t",
                  "--store", f"sqlite:///{ledger}")  # fmt: skip
        conn = sqlite3.connect(ledger)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        assert set() == {"subjects", "openings", "erasures"} & tables
        assert 2 == run.code


class TestPolicyErrors:
    """A broken policy stops a trail and the CLI names file and rule."""

    BAD = 'version = 1\n[[rules]]\npointer = "/data/x"\naction = "shred"\n'

    def test_cli_names_file_and_rule(self, cli: Any, tmp_path: Path) -> None:
        """`privacy policy bad.toml`: exit 2, the file and the rule named, no traceback."""
        bad = tmp_path / "bad.toml"
        bad.write_text(self.BAD)
        run = cli("privacy", "policy", bad)
        assert 2 == run.code
        assert "bad.toml" in run.err
        assert "rule" in run.err
        assert "shred" in run.err
        _clean(run)

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("broken.toml", "version = 1\n[[rules]\n"),
            ("broken.yaml", "version: 1\nrules: [\n"),
            ("nover.toml", '[[rules]]\npointer = "/x"\naction = "keep"\n'),
            ("badptr.toml", 'version = 1\n[[rules]]\npointer = "x"\naction = "keep"\n'),
            ("policy.txt", "version = 1\n"),
        ],
    )
    def test_cli_malformed_files(self, cli: Any, tmp_path: Path, name: str, text: str) -> None:
        """Unparseable, versionless, a bad pointer, an unknown format: exit 2, file named."""
        path = tmp_path / name
        path.write_text(text)
        run = cli("privacy", "policy", path)
        assert 2 == run.code
        assert name in run.err
        _clean(run)

    def test_missing_policy_file(self, cli: Any, tmp_path: Path) -> None:
        """A policy file that is not there: exit 2."""
        run = cli("privacy", "policy", tmp_path / "none.toml")
        assert 2 == run.code
        _clean(run)

    def test_good_policy_prints_digest(self, cli: Any) -> None:
        """The default policy: exit 0, its digest."""
        run = cli("privacy", "policy", "default", "--json")
        assert 0 == run.code
        assert orjson.loads(run.out)["digest"].startswith("sha256:")

    def test_trail_start_raises_policy_error(self, tmp_path: Path) -> None:
        """A trail configured with a broken policy does not start (nothing recorded)."""
        bad = tmp_path / "bad.toml"
        bad.write_text(self.BAD)
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path}/l.db", privacy_policy=str(bad))
        with pytest.raises(PolicyError, match=r"bad\.toml"):
            AuditTrail(config)
        assert not (tmp_path / "l.db").exists()


class TestFailClosed:
    """A store or key file that cannot be written: the record is written, values redacted."""

    @pytest.mark.parametrize("which", ["STORE", "KEYS"])
    def test_unwritable_store_redacts_and_counts(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        which: str,
    ) -> None:
        """WORKFLOW_AUDIT_PRIVACY_STORE (or _KEYS) inside a regular file: the record holds
        [REDACTED] for each committed value, privacy_failures counts it, the warning names no
        value."""
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        target = f"sqlite:///{blocker}/store.db" if which == "STORE" else f"{blocker}/keys.db"
        monkeypatch.setenv("WORKFLOW_AUDIT_LEDGER", f"sqlite:///{tmp_path}/l.db")
        monkeypatch.setenv("WORKFLOW_AUDIT_PRIVACY_POLICY", "default")
        monkeypatch.setenv(f"WORKFLOW_AUDIT_PRIVACY_{which}", target)
        failures = COUNTERS.snapshot().get("privacy_failures", 0)
        data = {"triggering_user": ALICE, "conf": {"email": EMAIL}}
        with caplog.at_level(logging.DEBUG), AuditTrail() as trail:
            stored = trail.record("dagrun.started", data, actor=("user", ALICE))
        record = orjson.loads(stored.body)
        assert "[REDACTED]" == record["data"]["triggering_user"]
        assert "[REDACTED]" == record["data"]["conf"]["email"]
        assert "[REDACTED]" == record["actor"]["id"]
        assert ALICE.encode() not in stored.body
        assert failures + 1 == COUNTERS.snapshot().get("privacy_failures", 0)
        assert "redacted instead of committed" in caplog.text
        logged = caplog.text + "".join(str(r.args) for r in caplog.records)
        assert [] == [s for s in (ALICE, EMAIL) if s in logged]
        assert [stored.body] == [
            b for k, b in bodies(tmp_path / "l.db").items() if k[0] == "default"
        ]

    def test_a_locked_store_is_waited_for_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The store locked past the busy timeout: the first record waits for it and redacts,
        the next ones (within STORE_RETRY_S) redact at once without trying it; every record is
        written and counted, no value reaches the log."""
        ledger = tmp_path / "l.db"
        config = AuditConfig(
            ledger_url=f"sqlite:///{ledger}", privacy_policy="default", busy_timeout_s=0.2
        )
        with AuditTrail(config) as trail:  # the store exists, with a subject already
            trail.record("dagrun.started", {"triggering_user": BOB})
        holder = sqlite3.connect(f"{ledger}.privacy.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        failures = COUNTERS.snapshot().get("privacy_failures", 0)
        try:
            with caplog.at_level(logging.WARNING), AuditTrail(config) as trail:
                stored = [
                    trail.record("dagrun.started", {"triggering_user": ALICE}) for _ in range(5)
                ]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert 5 * ["[REDACTED]"] == [
            orjson.loads(s.body)["data"]["triggering_user"] for s in stored
        ]
        assert failures + 5 == COUNTERS.snapshot().get("privacy_failures", 0)
        assert 1 == caplog.text.count("tried again in")
        assert 4 == caplog.text.count("unavailable a moment ago")
        assert ALICE not in caplog.text

    def test_the_next_trail_commits_again(self, tmp_path: Path) -> None:
        """Once the store can be written, records are committed (not redacted) again."""
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path}/l.db", privacy_policy="default")
        with AuditTrail(config) as trail:
            stored = trail.record("dagrun.started", {"triggering_user": ALICE})
        assert "$commit" in orjson.loads(stored.body)["data"]["triggering_user"]
        assert os.stat(f"{tmp_path}/l.db.privacy.db").st_mode & 0o077 == 0
        assert 1 == len(records(tmp_path / "l.db", "default"))
