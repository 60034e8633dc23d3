"""The privacy policy under real Prefect (issue 17): the example ML flow and a flow with a
personal parameter run on the session's local server with
``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_PRIVACY_POLICY=default`` and ``..._RECORD_PARAMETERS=true``;
then the parameter's and the predictions' data subjects are erased and everything verifies.

The flow records' actor is this process (no user), so a parameter value (no rule names its
subject) is its own subject, the fail-closed default (policy.py): the store knows
``bob@example.com`` and ``customer-0042``. A local server sets no ``created_by``.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from audit_core import Record
from audit_core.hooks import digest
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.privacy.store import PrivacyStore
from prefect_audit import audited_flow
from prefect_audit.adapter import PrefectAdapter, created_by, flush_runs
from prefect_audit.settings import WorkflowAuditSettings

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "example_flows"
BIN = Path(sys.executable).parent
EMAIL = "bob@example.com"
PARAMETERS = {"email": EMAIL}
CUSTOMER = "customer-0042"  # example_flows/ml_pipeline.py's synthetic data subject
NEEDLES = (EMAIL.encode(), CUSTOMER.encode())
SETTINGS_ENV = {
    "PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_PRIVACY_POLICY": "default",
    "PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_RECORD_PARAMETERS": "true",
}


@audited_flow(name="notify-customer")
def notify(email: str) -> int:
    """A flow whose one parameter is personal."""
    return len(email)


@dataclass
class World:
    """The runs' records, the CLI results and the files, before and after the erasures."""

    root: Path
    before: list[Record] = field(default_factory=list)
    subjects: dict[str, set[str]] = field(default_factory=dict)  # identifier -> pointers
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    flow_runs: list[Any] = field(default_factory=list)  # the runs as the server has them

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    def started(self, flow_name: str) -> Record:
        (found,) = [
            r
            for r in self.before
            if r.event == "flowrun.started" and r.subject["flow_name"] == flow_name
        ]
        return found

    def out(self, name: str) -> Any:
        run = self.runs[name]
        assert 0 == run.returncode, run.stderr[-3000:]
        return json.loads(run.stdout)


def _records(ledger: Path, chain: str = "prefect") -> list[Record]:
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read(chain)]
    finally:
        db.close()


def _store_subjects(store: Path, identifiers: tuple[str, ...]) -> dict[str, set[str]]:
    """The pointers of the openings the store holds for each identifier it knows."""
    db = PrivacyStore(f"sqlite:///{store}", read_only=True)
    try:
        out = {}
        for identifier in identifiers:
            pseudonym = db.pseudonym(identifier)
            if pseudonym is not None:
                out[identifier] = {o.pointer for o in db.openings(pseudonym)}
        return out
    finally:
        db.close()


def _settings(ledger: Path) -> WorkflowAuditSettings:
    """The integration's settings as Prefect reads them: from its environment variables."""
    saved = {k: os.environ.get(k) for k in SETTINGS_ENV}
    os.environ.update(SETTINGS_ENV)
    try:
        return WorkflowAuditSettings(ledger_url=f"sqlite:///{ledger}")
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Both flows run once under the policy, then the two subjects are erased."""
    from prefect.client.orchestration import get_client

    import prefect_audit.adapter as adapter_module

    w = World(tmp_path_factory.mktemp("privacy_prefect"))
    settings = _settings(w.ledger)
    assert (settings.privacy_policy, settings.record_parameters) == ("default", True)
    previous = adapter_module._ADAPTER
    adapter_module._ADAPTER = PrefectAdapter(settings)
    try:
        runpy.run_path(str(EXAMPLES / "ml_pipeline.py"))["ml_pipeline"]()
        assert len(EMAIL) == notify(EMAIL)
        assert flush_runs(300)
    finally:
        adapter_module._ADAPTER = previous
    w.before = _records(w.ledger)
    ids = {str(r.subject["flow_run_id"]) for r in w.before if r.event == "flowrun.started"}
    with get_client(sync_client=True) as client:
        w.flow_runs = [client.read_flow_run(i) for i in sorted(ids)]
    w.subjects = _store_subjects(w.root / "ledger.db.privacy.db", (EMAIL, CUSTOMER))

    env = {
        **os.environ,
        "WORKFLOW_AUDIT_LEDGER": f"sqlite:///{w.ledger}",
        "WORKFLOW_AUDIT_PRIVACY_POLICY": "default",
    }

    def cli(name: str, *args: str) -> None:
        w.runs[name] = subprocess.run(
            [str(BIN / "workflow-audit"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    started = w.started("notify-customer")
    cli("open", "privacy", "open", "--chain", "prefect", "--seq", str(started.seq), "--json")
    cli("erase-bob", "privacy", "erase", EMAIL, "--reason", "T-3", "--json")
    cli("erase-customer", "privacy", "erase", CUSTOMER, "--reason", "T-3", "--json")
    cli("reopen", "privacy", "open", "--chain", "prefect", "--seq", str(started.seq), "--json")
    cli("verify", "verify", "--ledger", f"sqlite:///{w.ledger}")
    cli("privacy-verify", "privacy", "verify", "--json")
    return w


class TestCommitted:
    """What the chain holds under the default policy."""

    def test_parameter_values_are_committed(self, world: World) -> None:
        """flowrun.started holds a $commit for the parameter, no value in clear."""
        params = world.started("notify-customer").data["parameters"]
        assert isinstance(params, dict)
        assert ["email"] == sorted(params)
        assert "$commit" in params["email"]  # type: ignore[operator]

    def test_model_invocation_is_committed(self, world: World) -> None:
        """model.invoked keeps rows and the batch root, commits values, their digests and the
        subject."""
        (invoked,) = [r for r in world.before if r.event == "model.invoked"]
        data = invoked.data
        assert 50 == data["batch"]["size"]  # type: ignore[index]
        for side in ("inputs", "outputs"):
            summary = data[side]
            assert isinstance(summary, dict)
            assert 50 == summary["rows"]
            assert "$commit" in summary["value"], side
            assert "$commit" in summary["sha256"], side
        assert "$commit" in data["data_subject"]  # type: ignore[operator]
        assert 64 == len(str(data["batch"]["root"]))  # type: ignore[index]

    def test_store_holds_the_parameter_and_the_customer(self, world: World) -> None:
        """No user acted: the parameter is its own subject; the model values the customer's."""
        assert {
            EMAIL: {"/data/parameters/email"},
            CUSTOMER: {
                "/data/data_subject",
                "/data/inputs/sha256",
                "/data/inputs/value",
                "/data/outputs/sha256",
                "/data/outputs/value",
            },
        } == world.subjects

    def test_open_returns_the_parameter(self, world: World) -> None:
        """privacy open gives the parameter's value back, status ok."""
        opened = {o["pointer"]: o for o in world.out("open")}
        assert ("ok", EMAIL) == (
            opened["/data/parameters/email"]["status"],
            opened["/data/parameters/email"]["value"],
        )

    def test_created_by_only_when_present(self, world: World) -> None:
        """A local server sets no created_by: the adapter records none and does not fail."""
        assert world.flow_runs
        assert [None] * len(world.flow_runs) == [created_by(r) for r in world.flow_runs]
        assert [] == [r.seq for r in world.before if "created_by" in r.data]

    def test_parameters_digest_is_committed(self, world: World) -> None:
        """The parameters' digest (a dictionary attack away from an e-mail) is nowhere in
        clear: no record holds sha256 of the parameters."""
        needle = digest(PARAMETERS).encode()
        assert [] == [r.seq for r in world.before if needle in json.dumps(r.subject).encode()]


class TestErased:
    """After `privacy erase bob@example.com` and `privacy erase customer-0042`."""

    def test_erasures_succeed(self, world: World) -> None:
        """Both subjects erase, their values counted."""
        assert (1, 1) == tuple(world.out("erase-bob")[k] for k in ("records", "values"))
        assert (1, 5) == tuple(world.out("erase-customer")[k] for k in ("records", "values"))

    def test_everything_still_verifies(self, world: World) -> None:
        """The chains verify; the commitments left either match or are unavailable."""
        assert 0 == world.runs["verify"].returncode, world.runs["verify"].stderr[-3000:]
        assert world.out("privacy-verify")["ok"]

    def test_open_says_unavailable(self, world: World) -> None:
        """The parameter can no longer be opened."""
        opened = {o["pointer"]: o["status"] for o in world.out("reopen")}
        assert "unavailable" == opened["/data/parameters/email"]
        assert {} == _store_subjects(world.root / "ledger.db.privacy.db", (EMAIL, CUSTOMER))

    def test_erased_values_are_nowhere(self, world: World) -> None:
        """Neither erased value is in any byte of the ledger, the store or the key file."""
        places = {p.name: p.read_bytes() for p in world.root.iterdir() if p.is_file()}
        assert "ledger.db.privacy-keys.db" in places
        hits = [f"{name}: {n!r}" for name, body in places.items() for n in NEEDLES if n in body]
        assert [] == hits
