"""The adapters' background flush: delivery to the sinks soon after a task or run ends.

>>> import time
>>> shipped = []
>>> flusher = Flusher(lambda: shipped.append("once"))
>>> flusher.request()   # returns at once; the flush thread delivers
>>> for _ in range(200):
...     if shipped:
...         break
...     time.sleep(0.01)
>>> shipped
['once']

The flusher knows no sinks and no shipper: it is handed ``deliver``, a callable that ships
whatever the ledger holds past the sinks' cursors (:func:`audit_core.ship.deliver_to_sinks`
builds the one the adapters use), so the adapter kit stays below delivery.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from audit_core._forklock import renew_after_fork
from audit_core._metrics import COUNTERS

__all__ = ["Flusher"]

logger = logging.getLogger("workflow_audit")


class Flusher:
    """Best-effort delivery soon after a task or run ends (``WORKFLOW_AUDIT_FLUSH_SINKS``).

    :meth:`request` only sets a flag: a daemon thread of this process then calls ``deliver``,
    so a hook never waits for a sink. What it does not deliver before the process ends stays
    in the ledger for the next flush or ``workflow-audit ship``: the ledger is the spool,
    nothing is lost. ``what`` names the destination in the log when ``deliver`` fails.
    """

    def __init__(self, deliver: Callable[[], None], what: object = "the sinks") -> None:
        self.deliver = deliver
        self.what = what
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pid = -1
        renew_after_fork(self)  # a fork during request() must not hang the child's flushes

    def request(self) -> None:
        """Ask for a flush (never blocks)."""
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: start our thread
                self._pid = os.getpid()
                self._wake = threading.Event()
                threading.Thread(
                    target=self._loop, args=(self._wake,), name="workflow-audit-flush", daemon=True
                ).start()
        self._wake.set()

    def _loop(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            try:
                self.deliver()  # a failing sink is logged, counted, retried next time
            except Exception:  # the flush thread's one containment point
                COUNTERS.incr("flush_failures")
                logger.exception("workflow-audit: background flush to %s failed", self.what)
