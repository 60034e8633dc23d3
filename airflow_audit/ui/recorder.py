"""The recorder of the audit trail page inside Airflow: each ``audit.*`` event the app hands
over (a page viewed, a record opened, a proof downloaded, an export made) goes onto the
``audit`` chain through the adapter's fail-open runner
(:meth:`audit_core.hooks.AdapterBase.submit`), the way the access records do.

The app calls the recorder on the event loop, after the answer is built: it only queues
(bounded, never blocking). One daemon thread per process writes; a full queue, a failing
ledger or a crash in building the record is logged once and counted
(``audit_reads_unrecorded``), never raised into the page.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from audit_core import COUNTERS, Event
from audit_core.readlog import AUDIT_CHAIN

__all__ = ["QUEUE_SIZE", "UNRECORDED", "Submit", "UiRecorder"]

logger = logging.getLogger("workflow_audit.airflow")

#: ``submit(what, build)`` of :class:`audit_core.hooks.AdapterBase`.
Submit = Callable[[str, Callable[[], Sequence[Event]]], bool]
#: Events waiting for the writer thread; past this they are dropped and counted.
QUEUE_SIZE = 10_000
#: The counter of ``audit.*`` events that did not reach the ledger (as ``readlog`` names it).
UNRECORDED = "audit_reads_unrecorded"
#: Longest wait at interpreter exit for queued events.
EXIT_FLUSH_S = 5.0


class UiRecorder:
    """``Recorder`` (``Callable[[Event], None]``) for :func:`audit_core.web.create_app`.
    ``submit`` (tests) replaces the process adapter's; events without a chain go on
    :data:`audit_core.readlog.AUDIT_CHAIN`."""

    def __init__(self, submit: Submit | None = None) -> None:
        self._submit = submit
        self._pid = -1
        self._lock = threading.Lock()
        self._queue: queue.Queue[Event] = queue.Queue(QUEUE_SIZE)
        self._warned: set[str] = set()

    def __call__(self, event: Event) -> None:
        try:
            if self._pid != os.getpid():  # first use, or a forked worker: its own thread
                self._start()
            self._queue.put_nowait(event if event.chain else replace(event, chain=AUDIT_CHAIN))
        except queue.Full:
            self._failed("the audit trail's record queue is full; records dropped")
        except Exception:  # noqa: BLE001 - fail-open: the page is answered regardless
            self._failed("an audit trail record could not be queued", exc=True)

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every queued event was handed to the ledger."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.Queue(QUEUE_SIZE)
            thread = threading.Thread(target=self._run, name="workflow-audit-ui", daemon=True)
            thread.start()
            if self._pid == -1:  # once: a forked child inherits the registration
                atexit.register(self.flush, EXIT_FLUSH_S)
            self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self._write(event)
            except Exception:  # noqa: BLE001 - the thread's one containment point
                self._failed("an audit trail record could not be written", exc=True)
            finally:
                self._queue.task_done()

    def _write(self, event: Event) -> None:
        submit = self._submit
        if submit is None:
            from airflow_audit.adapter import get_adapter

            submit = get_adapter().submit
        if not submit(event.type, lambda: [event]):
            # Spooled (it reaches the ledger later), late or lost: the runner logged which.
            self._failed(f"{event.type} did not reach the ledger in time")

    def _failed(self, message: str, *, exc: bool = False) -> None:
        """Count; log the first time of each kind only (a broken ledger fails every view)."""
        COUNTERS.incr(UNRECORDED)
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("workflow-audit: %s (counted as %s)", message, UNRECORDED, exc_info=exc)
