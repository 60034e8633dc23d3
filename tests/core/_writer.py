"""A writer process for the concurrency and crash tests.

usage: python _writer.py LEDGER_PATH WRITER_ID COUNT BATCH

Appends COUNT records (BATCH at a time with record_many when BATCH > 1) and prints
"seq hash" for each record after record()/record_many() returned, flushing each line, so
the parent knows exactly which records were acknowledged before it kills this process.
"""

from __future__ import annotations

import sys

from audit_core import AuditConfig, AuditTrail, Event


def main() -> None:
    path, writer, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # from_env: the tests set WORKFLOW_AUDIT_CHECKPOINT_EVERY and friends through the environment
    config = AuditConfig.from_env(ledger_url=f"sqlite:///{path}", actor=("process", writer))
    trail = AuditTrail(config)
    subject = {"dag_id": "ml_pipeline", "task_id": f"worker_{writer}", "run_id": "r1"}
    out = sys.stdout
    i = 0
    while i < count:
        if batch <= 1:
            stored = [trail.record("task.succeeded", {"writer": writer, "i": i}, subject=subject)]
        else:
            events = [
                Event(type="task.succeeded", data={"writer": writer, "i": i + k}, subject=subject)
                for k in range(min(batch, count - i))
            ]
            stored = trail.record_many(events)
        for s in stored:
            out.write(f"{s.seq} {s.hash.hex()}\n")
        out.flush()
        i += len(stored)


if __name__ == "__main__":
    main()
