"""Prefect's event stream as records: every flow and task run of the workspace (decorated or
not) and every change people make, recorded by a follower beside the server or a worker.

    workflow-audit follow prefect            # a sidecar: backfill, then live
    workflow-audit follow prefect --once     # catch up and exit (cron)
    python -c "from prefect_audit.follower import follow_flow; follow_flow.serve()"

:class:`PrefectStream` is an :class:`audit_core.sources.stream.Stream` over the Prefect API
that ``PREFECT_API_URL`` names: the backfill pages ``POST /api/events/filter`` (ascending by
occurred, 50 a page, then its ``next_page``); live events come from the websocket
``/api/events/out`` (Prefect's ``get_events_subscriber``) read by an asyncio loop in a thread
of its own, so the follower stays synchronous. Every API call takes at most
:data:`READ_TIMEOUT_S` (10 s) to connect and per read, without the Prefect client's own
retries: a server that accepts and never answers is a SourceError (one warning), retried by
the follower's backoff, and a stop is never stuck behind a read. Each event becomes records
through :func:`prefect_audit.eventmap.to_events` (keyed: a run's state change by
:func:`prefect_audit.ids.lifecycle_key`, anything else by the event id), so the follower and
``@audited_flow``'s hooks write one record per run, state and attempt between them.

**Which server.** The stream's name, so its cursor (``source:<name>``) and its
``source.started`` record, names the server: :func:`server_name` of the API URL
(``prefect.<host>-<port>.<digest>``; credentials are never part of it). The same ledger and
chain pointed at another server start again there (a ``source.started`` and a full backfill;
the keys skip what was recorded already) instead of resuming from the first server's cursor.
Not seen: a server whose database was reset, or replaced, behind the *same* URL; its older
events are read only if they occurred after the cursor less the overlap (run the follower
with a new ``--chain``, or ``--overlap`` as long as needed, after such a reset).

**Failures wait for the flow process.** A run's ``Failed``/``Crashed`` event seen live is held
``failure_grace`` seconds (2) before it is handed on: the flow process's hook records the same
state with the same key and knows what the event does not (the exception type, the traceback
digest), so its record should be the one kept. A backfill hands them on at once (the hook had
its chance long before).

**Anchored.** The follower is a long-running component: it signs checkpoints of every chain
that grew every ``anchor_interval`` seconds and on a clean stop, and offers them to the
configured witnesses (see :func:`follow`; ``workflow-audit follow`` does the same).

**Where live starts.** Prefect's client replays the minute before it (re)connects and the
server streams what arrives after it subscribed; the REST backfill the follower runs before
each connection covers what is older, so nothing between the two is missed. Heartbeats
(:data:`prefect_audit.eventmap.FOLLOW_SKIP`) are filtered out by the server.

:func:`open_stream` is the ``workflow_audit.streams`` entry point ``prefect``: it carries the
adapter's configuration (``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_*``: ledger, chain, signing
key, redaction, ``follow_overlap``), so the command records as the hooks do, on their chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import queue
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from prefect import flow

from audit_core import AuditTrail, Event, parse_timestamp
from audit_core.anchor import start_anchor
from audit_core.errors import ConfigError, SourceError
from audit_core.sources.stream import FollowResult, StreamFollower, StreamItem
from prefect_audit.eventmap import FOLLOW_SKIP, to_events
from prefect_audit.settings import WorkflowAuditSettings

__all__ = [
    "FAILURE_EVENTS",
    "PrefectStream",
    "follow",
    "follow_flow",
    "open_stream",
    "server_name",
]

#: Run states whose live event waits ``failure_grace`` seconds for the flow process's hook.
FAILURE_EVENTS = frozenset(
    f"prefect.{kind}.{state}"
    for kind in ("flow-run", "task-run")
    for state in ("Failed", "Crashed")
)
_PAGE = 50  # the most Prefect's events API returns a page
_FAR_PAST = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
# The backfill reads up to now; a client whose clock runs ahead stamps events in the future.
_AHEAD = dt.timedelta(days=1)
_TICK_S = 0.25  # live: the longest wait for an event before an idle tick
_ENDED = object()  # the pump's mark: the live stream ended
#: The longest an API call of the follower may take (connect, each read): a server that
#: accepts and never answers is a SourceError after this, and the follower's backoff retries.
READ_TIMEOUT_S = 10.0
_PUMP_STOP_S = 1.0  # stopping: the longest wait for the websocket's thread (a daemon)
_NOT_NAME = re.compile(r"[^A-Za-z0-9.-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def server_name(api_url: str) -> str:
    """The stream's name for the Prefect API at ``api_url`` (so its cursor's,
    ``source:<name>``): ``prefect.`` + host and port + a digest of the normalized URL
    (scheme and host lowercased, the scheme's default port spelled out; no credentials,
    query, fragment, repeated or trailing slashes). Within the rules of source names.

    >>> server_name("http://127.0.0.1:4200/api")
    'prefect.127.0.0.1-4200.261a7dfc47c0'
    >>> server_name("http://user:secret@127.0.0.1:4200/api/")
    'prefect.127.0.0.1-4200.261a7dfc47c0'
    """
    parts = urllib.parse.urlsplit(api_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # not a number: no port (the digest still has host and path)
        port = None
    path = re.sub("/+", "/", parts.path).rstrip("/")
    normalized = f"{scheme}://{host}:{port}{path}"
    digest = hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:12]
    readable = _NOT_NAME.sub("-", f"{host}-{port}").strip("-.")[:60] or "server"
    return f"prefect.{readable}.{digest}"


class PrefectStream:
    """Prefect's events (see the module docstring). ``settings`` default to the environment's;
    the API is Prefect's own settings' (``PREFECT_API_URL``)."""

    def __init__(
        self, settings: WorkflowAuditSettings | None = None, *, failure_grace: float = 2.0
    ) -> None:
        from prefect.context import SettingsContext, get_settings_context
        from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

        api_url = PREFECT_API_URL.value()
        if not api_url:
            # without one Prefect would start a throw-away server of its own: nothing to follow
            raise ConfigError("PREFECT_API_URL is not set: name the Prefect server to follow")
        #: ``prefect.<host>-<port>.<digest>`` (:func:`server_name`): the cursor is this server's
        self.name = server_name(str(api_url))
        self.settings = settings or WorkflowAuditSettings()
        #: the adapter's configuration: ``workflow-audit follow`` signs and redacts with it
        self.config = self.settings.audit_config()
        self.chain = self.config.chain
        self.overlap_s = self.settings.follow_overlap
        self.failure_grace = failure_grace
        self._client: Any = None
        self._lock = threading.Lock()  # the client: made, used and closed by one at a time
        # Prefect's settings (the API URL above all) live in a context variable: the calls
        # run in (a copy of) the context the stream was made in, whichever thread calls.
        # Without the client's own retries (up to minutes of them): the follower's backoff
        # is the retry, and a stop is never stuck behind them.
        self._context = contextvars.copy_context()
        current = get_settings_context()
        quick = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        # entered in the stream's own context (a copy) for good: never exited, nothing leaks
        self._context.run(SettingsContext(profile=current.profile, settings=quick).__enter__)

    def __repr__(self) -> str:
        return f"PrefectStream({self.name!r}, failure_grace={self.failure_grace})"

    # -- the REST side -------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Mapping[str, Any]:
        """One API call (at most :data:`READ_TIMEOUT_S` a read, no retries); any failure is
        a SourceError and the next call opens a new client."""
        try:
            answer = self._context.copy().run(self._call, method, path, kwargs)
        except Exception as exc:
            self.close()
            raise SourceError(f"Prefect's events API failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, Mapping):
            raise SourceError(f"Prefect's events API answered {type(answer).__name__}")
        return answer

    def _call(self, method: str, path: str, kwargs: dict[str, Any]) -> Any:
        import httpx
        from prefect.client.orchestration import get_client

        with self._lock:
            if self._client is None:
                client = get_client(
                    httpx_settings={"timeout": httpx.Timeout(READ_TIMEOUT_S)}, sync_client=True
                )
                client.__enter__()
                self._client = client
            client = self._client
        response = client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def _page(self, since: dt.datetime | None, limit: int) -> Mapping[str, Any]:
        now = dt.datetime.now(dt.timezone.utc)
        body = {
            "filter": {
                "occurred": {
                    "since": (since or _FAR_PAST).isoformat(),
                    "until": (now + _AHEAD).isoformat(),
                },
                "event": {"exclude_prefix": sorted(FOLLOW_SKIP)},
                "order": "ASC",
            },
            "limit": max(1, min(limit, _PAGE)),
        }
        return self._request("POST", "/events/filter", json=body)

    def backfill(self, since: dt.datetime | None, limit: int) -> Iterator[Sequence[StreamItem]]:
        """Pages of the events that occurred since ``since``, oldest first, up to now (the
        follower reads them in a thread of its own, ahead of their recording: the API gives
        50 events a request, so its round trips bound the rate)."""
        page = self._page(since, limit)
        while True:
            events = page.get("events") or []
            if events:
                yield [self._item(raw) for raw in events]
            token = _page_token(page.get("next_page"))
            if token is None:
                return
            page = self._request("GET", "/events/filter/next", params={"page-token": token})

    def oldest(self) -> dt.datetime | None:
        """When the oldest event the server still holds occurred."""
        events = self._page(None, 1).get("events") or []
        return _occurred(events[0]) if events else None

    def close(self) -> None:
        # not under the lock: a read hanging in another thread must not hold a close back
        client, self._client = self._client, None
        if client is not None:
            # a broken connection closes as it can
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)

    # -- the live side -------------------------------------------------------------------

    def live(self, since: dt.datetime, stop: threading.Event) -> Iterator[StreamItem | None]:
        """Events as the websocket delivers them (arrival order); failures held
        ``failure_grace`` s; a None when nothing arrived for a quarter of a second."""
        pump = _Pump(since, self._context.copy())
        pump.start()
        held: deque[tuple[float, StreamItem]] = deque()  # (due, item): due times ascend
        try:
            while not stop.is_set():
                try:
                    message = pump.feed.get(timeout=_TICK_S)
                except queue.Empty:
                    message = None
                now = time.monotonic()
                while held and held[0][0] <= now:
                    yield held.popleft()[1]
                if message is None:
                    yield None
                elif message is _ENDED:
                    break
                elif isinstance(message, Exception):
                    yield from (item for _, item in held)
                    held.clear()
                    raise SourceError(
                        f"Prefect's event stream failed: {type(message).__name__}: {message}"
                    ) from message
                elif isinstance(message, Mapping):
                    item = self._item(message)
                    if message.get("event") in FAILURE_EVENTS and self.failure_grace > 0:
                        held.append((now + self.failure_grace, item))
                    else:
                        yield item
            # stopped (or the server closed the stream): hand over what waits
            yield from (item for _, item in held)
        finally:
            pump.stop()

    def _item(self, raw: Mapping[str, Any]) -> StreamItem:
        ident = raw.get("id")
        if not ident:  # never from Prefect's server: an id still unique to the event
            text = json.dumps(raw, sort_keys=True, default=str).encode("utf-8", "replace")
            ident = "unidentified:" + hashlib.sha256(text).hexdigest()[:32]
        return StreamItem(_occurred(raw), str(ident), _Mapped(raw))


class _Mapped(Sequence[Event]):
    """An event's records, mapped (:func:`to_events`) on first access: the follower drops
    events it recorded moments before (a sweep reads them again) by id, without mapping."""

    __slots__ = ("_events", "_raw")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw: Mapping[str, Any] | None = raw
        self._events: list[Event] | None = None

    def _mapped(self) -> list[Event]:
        if self._events is None:
            self._events = to_events(self._raw or {})
            self._raw = None
        return self._events

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        return self._mapped()[index]

    def __len__(self) -> int:
        return len(self._mapped())

    def __iter__(self) -> Iterator[Event]:
        return iter(self._mapped())


def _occurred(raw: Mapping[str, Any]) -> dt.datetime:
    """When ``raw`` occurred; an event without a readable time (recorded as unreadable by
    the mapping) is placed at its receipt, else now."""
    for field in ("occurred", "received"):
        value = raw.get(field)
        if isinstance(value, str):
            try:
                return parse_timestamp(value)
            except ValueError:
                continue
    return dt.datetime.now(dt.timezone.utc)


def _page_token(next_page: object) -> str | None:
    """The ``page-token`` of a ``next_page`` URL, as the server wrote it (base64, not
    percent-encoded: ``parse_qs`` would turn its ``+`` into a space)."""
    if not isinstance(next_page, str) or "page-token=" not in next_page:
        return None
    return next_page.split("page-token=", 1)[1].split("&", 1)[0] or None


class _Pump(threading.Thread):
    """The websocket read by an asyncio loop of its own; events (JSON dicts), a failure or
    :data:`_ENDED` go to ``feed``. Prefect's own reconnects are off: a reconnect is the
    follower's (with a backfill first)."""

    def __init__(self, since: dt.datetime, context: contextvars.Context) -> None:
        super().__init__(name="workflow-audit-follow-prefect", daemon=True)
        self.since = since
        self.feed: queue.Queue[object] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        # a task runs in a copy of the context it is created in: the stream's
        self._task = context.run(self._loop.create_task, self._read())

    def run(self) -> None:
        try:
            self._loop.run_until_complete(self._task)
            self.feed.put(_ENDED)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - handed to the reader, who raises it
            self.feed.put(exc)
        finally:
            self._loop.close()

    async def _read(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

        wanted = EventFilter(
            # validated from plain datetimes: Prefect's own DateTime type is its business
            occurred=EventOccurredFilter.model_validate(
                {"since": self.since, "until": _far_future()}
            ),
            event=EventNameFilter(exclude_prefix=sorted(FOLLOW_SKIP)),
        )
        async with get_events_subscriber(filter=wanted, reconnection_attempts=0) as events:
            async for event in events:
                self.feed.put(event.model_dump(mode="json"))

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._task.cancel)
        self.join(_PUMP_STOP_S)  # a daemon: a websocket slow to close ends with the process


def _far_future() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)


def open_stream() -> PrefectStream:
    """The ``workflow_audit.streams`` entry point ``prefect``: the stream with the adapter's
    settings from the environment."""
    return PrefectStream()


def follow(
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    settings: WorkflowAuditSettings | None = None,
    ledger_url: str | None = None,
    chain: str | None = None,
    overlap_s: float | None = None,
    batch: int = 500,
    failure_grace: float = 2.0,
) -> FollowResult:
    """Follow Prefect's events into the ledger (the adapter's, unless ``ledger_url``) until
    ``stop`` is set, or with ``once`` until caught up (see :mod:`audit_core.sources.stream`).

    Anchored for its whole run: every chain of the ledger that grew is checkpointed every
    ``anchor_interval`` seconds and once more on the way out, and offered to the
    ``witnesses`` (:class:`audit_core.anchor.Anchor`; one that cannot start is logged and
    counted, and the follower records without it)."""
    stream = PrefectStream(settings, failure_grace=failure_grace)
    config = stream.config if ledger_url is None else stream.config.evolve(ledger_url=ledger_url)
    anchor = start_anchor(config, name="workflow-audit-anchor-follow")
    try:
        with AuditTrail(config) as trail:
            follower = StreamFollower(
                trail,
                stream,
                chain=chain or stream.chain,
                overlap_s=stream.overlap_s if overlap_s is None else overlap_s,
                batch=batch,
            )
            return follower.run(once=once, stop=stop)
    finally:
        stream.close()
        if anchor is not None:
            anchor.stop()  # the final round, after the trail's last records; never raises


@flow(name="workflow-audit-follow", log_prints=False)
def follow_flow(once: bool = False) -> dict[str, object]:
    """The follower as a Prefect flow (``follow_flow.serve()`` keeps it running as a served
    process); returns what it recorded."""
    result = follow(once=once)
    return {
        "recorded": result.recorded,
        "duplicates": result.duplicates,
        "gaps": result.gaps,
        "reconnects": result.reconnects,
        "cursor": None if result.cursor is None else result.cursor.isoformat(),
    }
