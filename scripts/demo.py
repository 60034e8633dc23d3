"""`make demo`: real Airflow runs of the example DAGs and real Prefect runs of the example
flows write the audit trail, each orchestrator on its own chain of one ledger; then the
`workflow-audit` CLI checkpoints, verifies, reports, proves one record, catches a tamper,
and makes and checks an evidence pack. The built-in privacy policy is on: people's names and
the model's inputs and outputs are on the chain only as keyed commitments; the demo opens one,
checks a claimed value, erases a data subject and shows every proof still holds.

Everything lives in .demo/ in the repository and is recreated on every run:

- .demo/airflow       a throw-away AIRFLOW_HOME (airflow.cfg, the SQLite metadata database)
- .demo/prefect       a throw-away PREFECT_HOME (profiles, the temporary server's database)
- .demo/ledger.db     the audit ledger (chains 'airflow' and 'prefect'); .key / .key.pub;
                      .privacy.db and .privacy-keys.db, the erasable privacy store and keys
- .demo/ml_pipeline   the examples' synthetic data lake and "model registry"
- .demo/logs          Airflow's and Prefect's output, one file per command
- .demo/tampered.db   a copy of the ledger with one record edited
- .demo/evidence.zip  the evidence pack of the demo's hour (report.pdf inside); and
                      evidence-changed.zip, a copy with one changed byte

Airflow and Prefect run with a cleaned environment (no inherited AIRFLOW*, PREFECT_* or
WORKFLOW_AUDIT_* variables), so the demo never touches a real Airflow or Prefect installation
(~/.prefect included) or a real ledger. No network access beyond loopback: `airflow dags test`
runs the DAG in-process against SQLite, and each Prefect flow starts Prefect's temporary
local server on 127.0.0.1.

Prefect lives in its own virtualenv (.venv-prefect: Airflow and Prefect pin disjoint fastapi
ranges), so the flows run as subprocesses of that venv's python; this script, the CLI and
Airflow run in .venv-airflow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from audit_core import Record, open_ledger

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/: airflow and workflow-audit
PREFECT_PYTHON = REPO / ".venv-prefect" / "bin" / "python"  # `make demo` builds this venv too
AIRFLOW_CHAIN = "airflow"  # the chain the Airflow plugin writes to
PRIVACY_POLICY = "default"  # the built-in privacy policy (docs/PRIVACY.md)
DATA_SUBJECT = "customer-0042"  # whose predictions example_dags/ml_pipeline.py records
PREFECT_CHAIN = "prefect"  # the chain the Prefect integration writes to (its default)
TIMEOUT_S = 300.0  # a hung Airflow or Prefect command fails the demo instead of blocking it

# `airflow dags test` exits 1 when the DAG run fails, and also when the DAG cannot be found
# or parsed; the run's end as recorded on the audit trail tells the two apart.
EXIT_DAG_RUN_FAILED = 1
# A failed Prefect flow run re-raises the task's exception, so `python FLOW.py` exits 1 as
# on any uncaught exception (an import error too); again the trail tells them apart.
EXIT_FLOW_RUN_FAILED = 1
EXIT_VERIFY_INVALID = 1  # `workflow-audit verify`: 1 means the trail is invalid


class DemoError(Exception):
    """A step did not do what the demo expects; the message says what and where to look."""


@dataclass(frozen=True, slots=True)
class Demo:
    """The paths every step shares (absolute: Airflow and the CLI must name the same files)."""

    root: Path = REPO / ".demo"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ml_home(self) -> Path:
        return self.root / "ml_pipeline"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.ledger}"

    @property
    def verifier_key(self) -> Path:
        # `workflow-audit checkpoint` signs with <ledger>.key, created on first use, and
        # writes the verifier key beside it (audit_core.checkpoint.write_key_files).
        return self.ledger.with_name(self.ledger.name + ".key.pub")

    @property
    def tampered(self) -> Path:
        return self.root / "tampered.db"

    @property
    def evidence(self) -> Path:
        return self.root / "evidence.zip"

    @property
    def witness_key(self) -> Path:
        return self.root / "witness" / "witness.key"

    @property
    def witness_vkey(self) -> Path:
        # `workflow-audit witness keygen` writes the public (0x04) key beside the private one
        return self.root / "witness" / "witness.key.pub"

    @property
    def rewritten(self) -> Path:
        return self.root / "rewritten.db"


Step = Callable[[Demo], None]
# The witness the demo runs (`workflow-audit witness serve`) and its URL, for the steps after
# `start_witness`; main() stops it whatever happens.
_WITNESS: list[tuple[subprocess.Popen[bytes], str]] = []
WITNESS_NAME = "witness.demo.example/w1"


# -- helpers ------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    """``path`` relative to the repository, for short messages."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _say(line: str) -> None:
    print(line, flush=True)


def _clean_env() -> dict[str, str]:
    """This process's environment without Airflow's, Prefect's or workflow-audit's settings,
    and the built-in privacy policy on (for the orchestrators and the CLI alike)."""
    prefixes = ("AIRFLOW", "PREFECT_", "WORKFLOW_AUDIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, "WORKFLOW_AUDIT_PRIVACY_POLICY": PRIVACY_POLICY}


def _airflow_env(demo: Demo) -> dict[str, str]:
    return {
        **_clean_env(),
        "AIRFLOW_HOME": str(demo.airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        # The plugin's default would be $AIRFLOW_HOME/workflow_audit/ledger.db; naming the
        # ledger here keeps the plugin and the CLI on the same file.
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": demo.ledger_url,
        "AIRFLOW__WORKFLOW_AUDIT__CHAIN": AIRFLOW_CHAIN,
        "WORKFLOW_AUDIT_LEDGER": demo.ledger_url,
        "ML_PIPELINE_HOME": str(demo.ml_home),
    }


def _prefect_env(demo: Demo) -> dict[str, str]:
    return {
        **_clean_env(),
        # A fresh home: no profile from ~/.prefect, so no PREFECT_API_URL, and each flow
        # starts Prefect's temporary local server on 127.0.0.1 with its database in here.
        "PREFECT_HOME": str(demo.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "WORKFLOW_AUDIT_LEDGER": demo.ledger_url,
        "WORKFLOW_AUDIT_CHAIN": PREFECT_CHAIN,
        # The integration's own setting wins over WORKFLOW_AUDIT_CHAIN; set it so a
        # prefect.toml in the repository could not move the records to another chain.
        "PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_CHAIN": PREFECT_CHAIN,
        "ML_PIPELINE_HOME": str(demo.ml_home),
    }


def _run(
    command: Sequence[str], env: dict[str, str], log: Path, what: str
) -> tuple[int, float, Path]:
    """Run ``command`` with its output in ``log``; (exit code, seconds, log)."""
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                timeout=TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"{what} did not finish in {TIMEOUT_S:.0f} s; see {_rel(log)}") from exc
    return code, time.perf_counter() - started, log


def _airflow(demo: Demo, args: Sequence[str], log_name: str) -> tuple[int, float, Path]:
    """Run ``airflow ARGS`` in the demo's AIRFLOW_HOME; (exit code, seconds, log)."""
    command = [str(BIN / "airflow"), *args]
    what = f"airflow {shlex.join(args)}"
    return _run(command, _airflow_env(demo), demo.logs / log_name, what)


def _prefect_flow(demo: Demo, script: str, log_name: str) -> tuple[int, float, Path]:
    """Run ``example_flows/SCRIPT`` with .venv-prefect's python; (exit code, seconds, log)."""
    if not PREFECT_PYTHON.exists():
        raise DemoError(f"no {_rel(PREFECT_PYTHON)}: run `make demo`, which builds it")
    path = REPO / "example_flows" / script
    what = f"{_rel(PREFECT_PYTHON)} {_rel(path)}"
    return _run([str(PREFECT_PYTHON), str(path)], _prefect_env(demo), demo.logs / log_name, what)


def _cli(*args: str, expect: int = 0, env: dict[str, str] | None = None) -> None:
    """Run ``workflow-audit ARGS`` in front of the user; fail unless it exits with ``expect``."""
    _say(f"\n$ workflow-audit {shlex.join(args)}")
    code = subprocess.run(
        [str(BIN / "workflow-audit"), *args],
        cwd=REPO,
        env=env or _clean_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    ).returncode
    sys.stdout.flush()
    if code != expect:
        raise DemoError(f"workflow-audit {args[0]} exited with {code}, expected {expect}")
    if expect != 0:
        _say(f"(exit code {code}, as expected)")


def _records(demo: Demo, chain: str, **subject: str) -> list[Record]:
    """The records on ``chain`` whose subject has every given key and value."""
    if not demo.ledger.exists():
        raise DemoError(f"no ledger at {_rel(demo.ledger)}: nothing wrote a record")
    ledger = open_ledger(demo.ledger_url)
    try:
        records = [Record.from_stored(stored) for stored in ledger.read(chain)]
    finally:
        ledger.close()
    return [r for r in records if all(r.subject.get(k) == v for k, v in subject.items())]


def _run_end(records: list[Record], kind: str, name: str, log: Path) -> Record:
    """The last ``KIND.succeeded``/``KIND.failed`` record (kind: dagrun or flowrun)."""
    ends = [r for r in records if r.event in (f"{kind}.succeeded", f"{kind}.failed")]
    if not ends:
        raise DemoError(
            f"no {kind}.succeeded or {kind}.failed record of {name} on the audit trail; "
            f"see {_rel(log)}"
        )
    return ends[-1]


def _dag_run_end(demo: Demo, dag_id: str, log: Path) -> tuple[Record, list[Record]]:
    """The DAG run's dagrun.succeeded/failed record, and all of the DAG's records."""
    records = _records(demo, AIRFLOW_CHAIN, dag_id=dag_id)
    return _run_end(records, "dagrun", dag_id, log), records


def _flow_run_end(demo: Demo, flow: str, log: Path) -> tuple[Record, list[Record]]:
    """The flow run's flowrun.succeeded/failed record, and all of the flow's records."""
    records = _records(demo, PREFECT_CHAIN, flow_name=flow)
    return _run_end(records, "flowrun", flow, log), records


def _retried(records: list[Record], task_key: str) -> str:
    """The tasks with a task.retry_scheduled record, for a short message."""
    retried = [str(r.subject.get(task_key)) for r in records if r.event == "task.retry_scheduled"]
    return ", ".join(retried) or "none"


def _model_deployed(demo: Demo) -> Record:
    """The last model.deployed record: the one the proof and the tamper are about."""
    deployed = [r for r in _records(demo, AIRFLOW_CHAIN) if r.event == "model.deployed"]
    if not deployed:
        raise DemoError("no model.deployed record on the audit trail")
    return deployed[-1]


# -- steps --------------------------------------------------------------------------------


def reset(demo: Demo) -> None:
    """Start from an empty .demo/, so every run is the same."""
    shutil.rmtree(demo.root, ignore_errors=True)
    demo.logs.mkdir(parents=True)
    _say(
        f"fresh {_rel(demo.root)}/: AIRFLOW_HOME={_rel(demo.airflow_home)}, "
        f"PREFECT_HOME={_rel(demo.prefect_home)}, ledger {demo.ledger_url} "
        f"(chains {AIRFLOW_CHAIN!r} and {PREFECT_CHAIN!r}), logs in {_rel(demo.logs)}/"
    )


def airflow_db_migrate(demo: Demo) -> None:
    """Create Airflow's metadata database in the throw-away AIRFLOW_HOME."""
    code, seconds, log = _airflow(demo, ["db", "migrate"], "airflow-db-migrate.log")
    if code != 0:
        raise DemoError(f"airflow db migrate exited with {code}; see {_rel(log)}")
    _say(f"airflow db migrate: ok in {seconds:.1f} s (log {_rel(log)})")


def airflow_run_ml_pipeline(demo: Demo) -> None:
    """Run ml_pipeline, which succeeds after one retry of validate."""
    dag_id = "ml_pipeline"
    code, seconds, log = _airflow(demo, ["dags", "test", dag_id], f"airflow-dags-test-{dag_id}.log")
    if code != 0:
        raise DemoError(f"airflow dags test {dag_id} exited with {code}; see {_rel(log)}")
    end, records = _dag_run_end(demo, dag_id, log)
    if end.event != "dagrun.succeeded":
        raise DemoError(f"{dag_id} exited 0 but the trail says {end.event}; see {_rel(log)}")
    _say(
        f"airflow dags test {dag_id}: succeeded in {seconds:.1f} s, {len(records)} records, "
        f"retried: {_retried(records, 'task_id')} (log {_rel(log)})"
    )


def airflow_run_ml_pipeline_bad_data(demo: Demo) -> None:
    """Run ml_pipeline_bad_data, whose run fails on purpose at validate."""
    dag_id = "ml_pipeline_bad_data"
    code, seconds, log = _airflow(demo, ["dags", "test", dag_id], f"airflow-dags-test-{dag_id}.log")
    if code == 0:
        raise DemoError(f"airflow dags test {dag_id} succeeded but must fail; see {_rel(log)}")
    if code != EXIT_DAG_RUN_FAILED:
        raise DemoError(f"airflow dags test {dag_id} exited with {code}; see {_rel(log)}")
    end, records = _dag_run_end(demo, dag_id, log)
    if end.event != "dagrun.failed":
        raise DemoError(f"{dag_id} exited {code} but the trail says {end.event}; see {_rel(log)}")
    tasks = end.data.get("failed_tasks")
    failed = ", ".join(map(str, tasks)) if isinstance(tasks, list) else "?"
    _say(
        f"airflow dags test {dag_id}: failed as intended (exit {code}) in {seconds:.1f} s at "
        f"{failed}, {len(records)} records (log {_rel(log)})"
    )


def prefect_run_ml_pipeline(demo: Demo) -> None:
    """Run the ml-pipeline flow, which succeeds after one retry of validate."""
    flow = "ml-pipeline"
    code, seconds, log = _prefect_flow(demo, "ml_pipeline.py", f"prefect-flow-{flow}.log")
    if code != 0:
        raise DemoError(f"prefect flow {flow} exited with {code}; see {_rel(log)}")
    end, records = _flow_run_end(demo, flow, log)
    if end.event != "flowrun.succeeded":
        raise DemoError(f"{flow} exited 0 but the trail says {end.event}; see {_rel(log)}")
    _say(
        f"prefect flow {flow}: succeeded in {seconds:.1f} s, {len(records)} records, "
        f"retried: {_retried(records, 'task_name')} (log {_rel(log)})"
    )


def prefect_run_ml_pipeline_bad_data(demo: Demo) -> None:
    """Run the ml-pipeline-bad-data flow, whose run fails on purpose at validate."""
    flow = "ml-pipeline-bad-data"
    code, seconds, log = _prefect_flow(demo, "ml_pipeline_bad_data.py", f"prefect-flow-{flow}.log")
    if code == 0:
        raise DemoError(f"prefect flow {flow} succeeded but must fail; see {_rel(log)}")
    if code != EXIT_FLOW_RUN_FAILED:
        raise DemoError(f"prefect flow {flow} exited with {code}; see {_rel(log)}")
    end, records = _flow_run_end(demo, flow, log)
    if end.event != "flowrun.failed":
        raise DemoError(f"{flow} exited {code} but the trail says {end.event}; see {_rel(log)}")
    failed = ", ".join(str(r.subject.get("task_name")) for r in records if r.event == "task.failed")
    error = end.data.get("error_type", "?")
    _say(
        f"prefect flow {flow}: failed as intended (exit {code}, {error}) in {seconds:.1f} s at "
        f"{failed or '?'}, {len(records)} records (log {_rel(log)})"
    )


def prefect_trace_context(demo: Demo) -> None:
    """Every record of the Prefect chain carries a W3C trace id, and the records of one flow
    run share one: Prefect's traceparent when OpenTelemetry is on, else the id derived from
    the flow run id (prefect_audit.ids), as here, where no SDK is configured."""
    records = _records(demo, PREFECT_CHAIN)
    missing = [r for r in records if not (r.trace or {}).get("trace_id")]
    if not records or missing:
        where = f"seq {missing[0].seq} ({missing[0].event})" if missing else "no records"
        raise DemoError(f"{len(missing)} Prefect record(s) without a trace id: first {where}")
    traces: dict[object, set[object]] = {}
    for r in records:
        traces.setdefault(r.subject.get("flow_run_id"), set()).add((r.trace or {})["trace_id"])
    split = [run for run, ids in traces.items() if len(ids) != 1]
    if split:
        raise DemoError(f"flow run {split[0]}: its records carry {len(traces[split[0]])} trace ids")
    _say(
        f"prefect chain: {len(records)}/{len(records)} records carry a trace id, one per flow "
        f"run ({len(traces)} runs)"
    )


def airflow_ingest_event_log(demo: Demo) -> None:
    """Airflow's own event log (the ``log`` table: here the ``airflow dags test`` commands
    above) onto the chain ``airflow-events``, as a sidecar would; in a deployment the
    scheduler and the API server do this by themselves."""
    env = _airflow_env(demo)
    _say("\n$ workflow-audit ingest airflow")
    code = subprocess.run(
        [str(BIN / "workflow-audit"), "ingest", "airflow"], env=env, check=False
    ).returncode
    if code != 0:
        raise DemoError(f"workflow-audit ingest airflow exited with {code}")
    commands = [r for r in _records(demo, "airflow-events") if r.event == "cli.command"]
    if not commands:
        raise DemoError("no cli.command record on chain 'airflow-events' after ingesting")
    _say(
        f"chain airflow-events: {len(commands)} `airflow` commands, each with who ran it "
        f"({commands[0].actor.get('id')}) and its command line"
    )


def checkpoint(demo: Demo) -> None:
    """Sign a checkpoint of every chain now: the Airflow plugin signs one only every 1000
    records or 300 s."""
    _cli("checkpoint", "--ledger", demo.ledger_url)
    if not demo.verifier_key.exists():
        raise DemoError(f"checkpoint wrote no verifier key at {_rel(demo.verifier_key)}")


def _witness_env(demo: Demo) -> dict[str, str]:
    """The CLI's environment with the demo's witness configured (WORKFLOW_AUDIT_WITNESSES)."""
    url = _WITNESS[0][1]
    vkey = demo.witness_vkey.read_text(encoding="utf-8").strip()
    return {**_clean_env(), "WORKFLOW_AUDIT_WITNESSES": f"{url} {vkey}"}


def start_witness(demo: Demo) -> None:
    """Start an independent witness (c2sp.org/tlog-witness) on 127.0.0.1 that trusts this
    log's verifier key, and have it cosign every chain's checkpoint. It cosigns a checkpoint
    only if it extends the last one it saw of that chain; a rewrite is refused."""
    keygen = ("witness", "keygen", WITNESS_NAME, "--out", str(demo.witness_key))
    _cli(*keygen)
    log = demo.logs / "witness.log"
    command = [
        str(BIN / "workflow-audit"), "witness", "serve", "--key", str(demo.witness_key),
        "--state", str(demo.root / "witness" / "state.db"),
        "--log", demo.verifier_key.read_text(encoding="utf-8").split()[-1], "--port", "0",
    ]  # fmt: skip
    _say(f"\n$ {shlex.join(['workflow-audit', *command[1:]])} &")
    out = log.open("wb")
    process = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 60.0
    while "listening on " not in (text := log.read_text(encoding="utf-8", errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise DemoError(f"the witness did not start; see {_rel(log)}")
        time.sleep(0.1)
    url = text.split("listening on ", 1)[1].split()[0]
    _WITNESS.append((process, url))
    _say(f"witness {WITNESS_NAME} listening on {url} (log: {_rel(log)})")
    # Long-running components do this every 60 s by themselves (the anchor); here, once.
    _cli("checkpoint", "--ledger", demo.ledger_url, env=_witness_env(demo))


def stop_witness() -> None:
    """Stop the demo's witness (SIGTERM: it exits 0), if it runs."""
    while _WITNESS:
        process, _ = _WITNESS.pop()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def verify(demo: Demo) -> None:
    """Verify every record, link and hash, the checkpoints' signatures, and that the
    witness cosigned each chain's checkpoint (its time shown)."""
    _cli(
        "verify", "--ledger", demo.ledger_url, "--key", str(demo.verifier_key),
        "--witness", str(demo.witness_vkey), "--quorum", "1",
    )  # fmt: skip


def health(demo: Demo) -> None:
    """What an operator's cron job or probe runs: per chain the records, the last record and
    checkpoint, what the witness cosigned, the spool's backlog; exit 4 when a threshold is
    passed."""
    _cli("health", "--ledger", demo.ledger_url, "--verify", env=_witness_env(demo))


def report(demo: Demo) -> None:
    """The auditor's report (Markdown), with the verification verdict in it."""
    _cli("report", "--ledger", demo.ledger_url, "--key", str(demo.verifier_key))


def prove_model_deployed(demo: Demo) -> None:
    """Prove the model.deployed record is in the signed tree, then check that offline."""
    seq = _model_deployed(demo).seq
    bundle = demo.ledger.with_name(f"{demo.ledger.name}.proof-{seq}.json")
    _cli(
        "prove",
        "--ledger",
        demo.ledger_url,
        "--chain",
        AIRFLOW_CHAIN,
        "--seq",
        str(seq),
        "-o",
        str(bundle),
    )
    # Offline: only the bundle, the verifier key and the witness's key, not the ledger.
    _cli(
        "verify-proof", str(bundle), "--key", str(demo.verifier_key),
        "--witness", str(demo.witness_vkey),
    )  # fmt: skip


def tamper(demo: Demo) -> None:
    """Edit one record in a copy of the ledger, as someone with write access could, and show
    that verify names it (exit code 1)."""
    deployed = _model_deployed(demo)
    before = deployed.data.get("accuracy")
    after = 0.5 if before == 0.99 else 0.99
    # The ledger runs in WAL mode: copying ledger.db alone would lose the latest records.
    with (
        contextlib.closing(sqlite3.connect(demo.ledger)) as src,
        contextlib.closing(sqlite3.connect(demo.tampered)) as dst,
    ):
        src.backup(dst)
    with contextlib.closing(sqlite3.connect(demo.tampered)) as db, db:
        # The append-only triggers stop mistakes, not someone who can write the file.
        db.execute("DROP TRIGGER records_no_update")
        db.execute(
            "UPDATE records SET body = CAST(json_set(CAST(body AS TEXT), '$.data.accuracy', ?)"
            " AS BLOB) WHERE chain = ? AND seq = ?",
            (after, AIRFLOW_CHAIN, deployed.seq),
        )
    _say(
        f"\ntamper: copied the ledger to {_rel(demo.tampered)}, dropped its append-only trigger "
        f"and set data.accuracy of the model.deployed record (chain {AIRFLOW_CHAIN!r} seq "
        f"{deployed.seq}) from {before} to {after}"
    )
    _cli(
        "verify",
        "--ledger",
        f"sqlite:///{demo.tampered}",
        "--key",
        str(demo.verifier_key),
        expect=EXIT_VERIFY_INVALID,
    )


def rewrite_resigned(demo: Demo) -> None:
    """What a local key cannot stop: someone who holds the ledger AND its signing key cuts the
    last records of chain airflow from a copy and signs a fresh checkpoint. `verify --key`
    passes; the witness's cosignature catches it (exit code 1, naming the witnessed size and
    root), the witness refuses to cosign the cut history, and with the cosignatures deleted
    too, asking the witness online (`--witness "URL KEY"`) still catches it."""
    with (
        contextlib.closing(sqlite3.connect(demo.ledger)) as src,
        contextlib.closing(sqlite3.connect(demo.rewritten)) as dst,
    ):
        src.backup(dst)
    for suffix in (".key", ".key.pub"):  # the attacker holds the key too
        shutil.copyfile(f"{demo.ledger}{suffix}", f"{demo.rewritten}{suffix}")
    with contextlib.closing(sqlite3.connect(demo.rewritten)) as db, db:
        query = "SELECT count(*) FROM records WHERE chain = ?"
        size = int(db.execute(query, (AIRFLOW_CHAIN,)).fetchone()[0])
        keep = size - 3
        for trigger in ("records_no_delete", "checkpoints_no_delete", "record_keys_no_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        for table, column in (
            ("records", "seq"), ("record_keys", "seq"), ("record_index", "seq"),
            ("merkle_subtrees", "last"),
        ):  # fmt: skip
            db.execute(f"DELETE FROM {table} WHERE chain = ? AND {column} >= ?",  # noqa: S608
                       (AIRFLOW_CHAIN, keep))  # fmt: skip
        db.execute("DELETE FROM checkpoints WHERE chain = ? AND size > ?", (AIRFLOW_CHAIN, keep))
    _say(
        f"\nrewrite: copied the ledger and its key to {_rel(demo.rewritten)}, cut the last 3 of "
        f"{size} records of chain {AIRFLOW_CHAIN!r} and signed a new checkpoint with the key"
    )
    url = f"sqlite:///{demo.rewritten}"
    key = str(demo.rewritten) + ".key.pub"
    _cli("checkpoint", "--ledger", url, "--chain", AIRFLOW_CHAIN)
    _cli("verify", "--ledger", url, "--key", key, "--chain", AIRFLOW_CHAIN)
    _cli(
        "verify", "--ledger", url, "--key", key, "--chain", AIRFLOW_CHAIN,
        "--witness", str(demo.witness_vkey), "--quorum", "1", expect=EXIT_VERIFY_INVALID,
    )  # fmt: skip
    # Asked to cosign the cut chain, the witness answers 409 Conflict: it cosigned more.
    _cli("checkpoint", "--ledger", url, "--chain", AIRFLOW_CHAIN, env=_witness_env(demo))
    # A careful attacker also deletes the cosignatures from the ledger; asked online, the
    # witness still says what it cosigned.
    with contextlib.closing(sqlite3.connect(demo.rewritten)) as db, db:
        db.execute("DROP TRIGGER cosignatures_no_delete")
        db.execute("DELETE FROM cosignatures")
    _say("\nrewrite: deleted every cosignature from the copy; now ask the witness itself")
    online = f"{_WITNESS[0][1]} {demo.witness_vkey.read_text(encoding='utf-8').strip()}"
    _cli(
        "verify", "--ledger", url, "--key", key, "--chain", AIRFLOW_CHAIN,
        "--witness", online, expect=EXIT_VERIFY_INVALID,
    )  # fmt: skip


def evidence_pack(demo: Demo) -> None:
    """The auditor's evidence pack of the demo's hour: verification, signed checkpoints and
    proofs, every failure in full, the controls it evidences (and those it does not), the
    orchestrator's runs reconciled; then checked offline with the pack and the verifier key
    alone, and a copy with one changed byte named (exit code 1)."""
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    since = hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    pack = str(demo.evidence)
    _cli(
        "evidence", "--ledger", demo.ledger_url, "--since", since, "--reconcile", "airflow",
        "-o", pack, env=_airflow_env(demo),
    )  # fmt: skip
    _cli("verify-evidence", pack, "--key", str(demo.verifier_key))
    # An auditor with read access: nothing of the period left out, the ledger not rewritten.
    _cli("verify-evidence", pack, "--key", str(demo.verifier_key), "--ledger", demo.ledger_url)
    changed = demo.root / "evidence-changed.zip"
    with zipfile.ZipFile(demo.evidence) as src, zipfile.ZipFile(changed, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "records/failure.jsonl":  # one byte of one failure record
                body = body.replace(b"task.failed", b"task.fa1led", 1)
            dst.writestr(info, body)
    _say(f"\nchanged one byte of records/failure.jsonl in a copy, {_rel(changed)}")
    _cli("verify-evidence", str(changed), "--key", str(demo.verifier_key), expect=1)


def personal_data(demo: Demo) -> None:
    """The model's batch of predictions is on the chain as digests, a Merkle root and keyed
    commitments; an auditor holding the privacy store opens one and checks a claimed value;
    then the data subject is erased (GDPR Art. 17) and every proof still verifies."""
    invoked = [r for r in _records(demo, AIRFLOW_CHAIN) if r.event == "model.invoked"]
    if not invoked:
        raise DemoError("no model.invoked record on the audit trail")
    seq = str(invoked[-1].seq)
    where = ("--ledger", demo.ledger_url, "--chain", AIRFLOW_CHAIN, "--seq", seq)
    _cli("show", "--ledger", demo.ledger_url, "--chain", AIRFLOW_CHAIN, "--event", "model.invoked")
    _cli("privacy", "open", *where, "--pointer", "/data/data_subject")
    claim = ("privacy", "verify", *where, "--pointer", "/data/data_subject", "--value")
    _cli(*claim, f'"{DATA_SUBJECT}"')
    _cli(*claim, '"customer-0043"', expect=1)
    _cli("privacy", "erase", DATA_SUBJECT, "--ledger", demo.ledger_url,
         "--reason", "demo: erasure request 42")  # fmt: skip
    _cli("privacy", "open", *where, "--pointer", "/data/data_subject")
    # The chain is untouched: it verifies, and the pack made before the erasure still holds.
    _cli("verify", "--ledger", demo.ledger_url, "--key", str(demo.verifier_key))
    _cli(
        "verify-evidence", str(demo.evidence), "--key", str(demo.verifier_key),
        "--ledger", demo.ledger_url,
    )  # fmt: skip


def next_steps(demo: Demo) -> None:
    """Commands to explore the trail further."""
    wa = _rel(BIN / "workflow-audit")
    _say(
        f"\nThe ledger is {demo.ledger_url}; checkpoints are signed with {_rel(demo.ledger)}.key "
        f"(verifier key {_rel(demo.verifier_key)}). Try:\n"
        f"  {wa} show --ledger {demo.ledger_url} --event 'task.*'\n"
        f"  {wa} show --ledger {demo.ledger_url} --chain {PREFECT_CHAIN} --event 'flowrun.*'\n"
        f"  {wa} export --ledger {demo.ledger_url} --format jsonl\n"
        f"  {wa} serve --ledger {demo.ledger_url} --verifier-key {_rel(demo.verifier_key)}"
        "   # then open http://127.0.0.1:8421\n"
        f"  AIRFLOW_HOME={_rel(demo.airflow_home)} {_rel(BIN / 'airflow')} dags list-runs "
        "ml_pipeline"
    )


# The demo, in order. Each step raises DemoError when something is not as expected.
SETUP: tuple[Step, ...] = (reset,)
AIRFLOW: tuple[Step, ...] = (
    airflow_db_migrate,
    airflow_run_ml_pipeline,
    airflow_run_ml_pipeline_bad_data,
    airflow_ingest_event_log,
)
# Prefect lives in .venv-prefect: its steps run the example flows there as subprocesses,
# writing to the same ledger on a chain of their own, before the ledger steps below
# checkpoint, verify, check health and report on every chain.
PREFECT: tuple[Step, ...] = (
    prefect_run_ml_pipeline,
    prefect_run_ml_pipeline_bad_data,
    prefect_trace_context,
)
LEDGER: tuple[Step, ...] = (
    checkpoint,
    start_witness,
    verify,
    health,
    report,
    prove_model_deployed,
    tamper,
    rewrite_resigned,
    evidence_pack,
    personal_data,
    next_steps,
)
STEPS: tuple[Step, ...] = (*SETUP, *AIRFLOW, *PREFECT, *LEDGER)


def main() -> int:
    demo = Demo()
    started = time.perf_counter()
    try:
        for step in STEPS:
            step(demo)
    except DemoError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_witness()
    _say(f"\ndemo done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
