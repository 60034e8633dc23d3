"""The privacy policy: which nodes of a record's view are kept, redacted, committed or
encrypted, and whose data each one is (docs/PRIVACY.md).

>>> from audit_core.privacy.policyfile import parse_policy
>>> policy = parse_policy({"version": 1, "rules": [
...     {"pointer": "/data/conf/model_version", "action": "keep"},
...     {"pointer": "/**/email", "action": "commit"}]}, source="<doc>")
>>> view = {"actor": {"type": "user", "id": "Ann"}, "subject": {"dag_id": "etl"},
...         "data": {"conf": {"model_version": "3", "email": "a@x.org", "n": 5}}}
>>> for d in policy.decide("dagrun.started", view):
...     print(d.pointer, d.action, d.subject)
/actor/id commit Ann
/data/conf/email commit a@x.org
/data/conf/n commit Ann

How a view is decided. The view ``{"actor", "subject", "data"}`` is walked top-down, in
document order. At each node the FIRST rule (file order; the user's rules before the built-in
:data:`DEFAULT_RULES` when ``include_defaults``) whose pattern matches the node's RFC 6901
pointer, whose ``events`` match the record's event type (``fnmatch``, case-sensitive) and
whose ``when`` equalities hold decides it: ``keep`` leaves the node and everything under it,
``redact``/``commit``/``encrypt`` transform the whole node (one :class:`Decision`; nothing
under it is looked at). No rule: the walk goes on into the node's members. A subtree no rule
can match is never entered, so a 10,000-item list under a decided node (or under no pattern at
all) costs nothing. A node whose value is empty (``null``, ``""``, ``{}``, ``[]``) is never
transformed: it carries nothing to hide, and a commitment of ``null`` would only make the
store a subject called "null".

Patterns are RFC 6901 pointers whose token ``*`` stands for exactly one token and ``**`` for
one or more (anywhere: ``/**/email``); other tokens are compared after unescaping (``~1`` is
``/``, ``~0`` is ``~``), so a member literally named ``*`` is matched only by a wildcard.
``when`` maps pointers to JSON values, compared as RFC 8785 canonical JSON; a ``@/…`` key is
relative to the node being decided (``{"@/prefect.resource.role": "actor"}``).

*Closed* nodes fail closed (the issue: "unknown free-text in conf/parameters fails closed"):
the built-in :data:`CLOSED` plus the file's ``closed`` list. A closed node no rule decided
has every direct member (dict member or list item) committed as a whole, unless a rule decides
that member (a ``keep`` for a member wins); where a rule could still match deeper inside a
member (``keep /data/conf/model/version``), the member is itself treated as closed, so only
what a rule keeps stays readable. Member *names* stay visible: commit the node to hide them.
Built-in closed nodes apply even without the defaults (``keep`` one to open it).

Whose data a transformed node is (its *subject*, what ``privacy erase`` names): the rule's
``subject`` — ``"self"`` (the node's own value), ``"/abs/pointer"`` (a value of the original
view) or ``"@/rel/pointer"`` (relative to the node) — as text: a string as it is, anything
else its RFC 8785 canonical JSON. Missing, ``null`` or ``""`` falls back to the *closed
subject*: ``/actor/id`` when ``/actor/type`` is ``"user"``, else the node's own value. Only a
string of at most 256 characters names a subject; when none does (a number, a list, a whole
batch of model inputs without its ``data_subject``) the decision's subject is None and the
value is keyed for its record alone (``record:<nonce>``, erasable by that name). Texts are
Unicode NFC-normalized, nothing else (no stripping, no case folding: Airflow's usernames are
case-sensitive). A rule without ``subject`` means ``"self"``.

The policy's ``digest`` (``"sha256:" + hex``) is over the canonical bytes of
:meth:`Policy.to_json`, the effective policy (defaults and built-in closed nodes included,
every optional field filled in), so two files that mean the same give one digest whatever
their format. Every record a policy shaped names it (``data._privacy.policy``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from audit_core._jcs import canonical_bytes
from audit_core._normalize import JSON
from audit_core.privacy.pointer import MISSING, escape_token, resolve, unescape_token

__all__ = [
    "ACTIONS",
    "CLOSED",
    "DEFAULT_RULES",
    "MAX_FILE_BYTES",
    "MAX_RULES",
    "Action",
    "Decision",
    "Policy",
    "Rule",
    "default_policy",
]

Action = Literal["keep", "redact", "commit", "encrypt"]
ACTIONS: Final = ("keep", "redact", "commit", "encrypt")
MAX_FILE_BYTES: Final = 1 << 20
MAX_RULES: Final = 10_000
#: Longer texts (or any non-string) name no data subject: keyed per record instead.
MAX_SUBJECT_CHARS: Final = 256
_ANY: Final = 1  # '*': exactly one token
_MANY: Final = 2  # '**' compiles to '*' then this: zero or more further tokens
_CACHE_CAP: Final = 256  # transitions remembered per walk state, event types per policy
_EMPTY: Final[tuple[object, ...]] = (None, "", {}, [])


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy (file order). ``subject`` is None for keep and redact."""

    pointer: str
    action: Action
    subject: str | None = None
    events: tuple[str, ...] = ("*",)
    when: tuple[tuple[str, JSON], ...] = field(default=(), repr=False)  # may name a person

    def to_json(self) -> dict[str, JSON]:
        return {
            "pointer": self.pointer,
            "action": self.action,
            "subject": self.subject,
            "events": list(self.events),
            "when": dict(self.when),
        }


_ACCESS, _FAILED = ("access.*",), ("access.login_failed",)
_PERM, _READS, _ALL = ("permission.changed",), ("audit.*",), ("*",)
#: What an operator does from the CLI (reads, exports, erasures, the policy): its default
#: actor is process:USER@HOST, a person's login; a worker's process actor is not committed.
_OPERATOR = ("audit.*", "privacy.*")
_USER = {"/actor/type": "user"}
#: Airflow's user changes (airflow_audit/permissions.py ``diff``): ``target`` is the username.
_USER_CHANGES = ("user.created", "user.deleted", "user.updated", "user.roles")
_CONFIG = {"/data/change": "config"}  # SimpleAuthManager's user list changed

# fmt: off
#: Every place an adapter puts a person's name, username, e-mail or address into a record, as
#: (pointer, subject, events, when); each one is a ``commit``.
_DEFAULTS: Final[tuple[tuple[str, str, tuple[str, ...], Mapping[str, JSON]], ...]] = (
    # who acted: Airflow's triggering/REST/CLI user, Prefect Cloud's user, a reader (readlog)
    ("/actor/id",                 "self",                    _ALL,    _USER),
    # a process actor is USER@HOST: an operating-system login (the CLI's default actor)
    ("/actor/id",                 "self",                    _OPERATOR, {"/actor/type": "process"}),
    # the run's person (airflow_audit/adapter.py _dagrun_data; prefect_audit/adapter.py
    # created_by {id, type, display_value}: a user, deployment or automation, committed alike)
    ("/data/triggering_user",     "self",                    _ALL,    {}),
    ("/data/created_by",          "@/display_value",         _ALL,    {}),
    # a model invocation's values belong to its data subject (audit_core/model.py)
    ("/data/data_subject",        "self",                    _ALL,    {}),
    ("/data/inputs/value",        "/data/data_subject",      _ALL,    {}),
    ("/data/outputs/value",       "/data/data_subject",      _ALL,    {}),
    # their digests too: a guessable input (one e-mail) is confirmed by its SHA-256
    ("/data/inputs/sha256",       "/data/data_subject",      _ALL,    {}),
    ("/data/outputs/sha256",      "/data/data_subject",      _ALL,    {}),
    # a conf's digest is a dictionary attack away from a low-entropy conf; the run's actor
    # (triggering user, creator) is whose conf it is; value_sha256: the event log's conf digests
    ("/data/conf_sha256",         "/actor/id",               _ALL,    {}),
    ("/data/parameters_sha256",   "/actor/id",               _ALL,    {}),
    ("/subject/parameters_sha256", "/actor/id",              _ALL,    {}),  # Prefect's runs
    ("/data/extra/value_sha256",  "/actor/id",               _ALL,    {}),
    # Airflow's event log row (airflow_audit/eventmap.py): owner is the user who acted (or the
    # DAG's author-given owner), owner_display_name their full name
    ("/data/owner",               "self",                    _ALL,    {}),
    ("/data/owner_display_name",  "/data/owner",             _ALL,    {}),
    # a CLI command line names whom it creates or changes (users create --username --email
    # --firstname --lastname): committed whole; the row's event (cli_users_create) stays
    ("/data/extra/full_command",  "/data/owner",             _ALL,    {}),
    # access.* (airflow_audit/access.py, prefect_audit/eventmap.py _cloud_data): the user, the
    # username a failed login tried, the client's IP address (personal data: CJEU C-582/14),
    # Prefect Cloud's user resource
    ("/data/user",                "self",                    _ACCESS, {}),
    ("/data/username",            "self",                    _ACCESS, {}),
    ("/data/client",              "/data/username",          _FAILED, {}),
    ("/data/client",              "/data/user",              _ACCESS, {}),
    ("/data/prefect/resource",    "@/prefect.resource.name", _ACCESS, {}),
    # permission.changed (airflow_audit/permissions.py): the user changed and the request path
    # naming them, the CLI row's owner, SimpleAuthManager's user lists
    *(("/data/target",            "self",                    _PERM,   {"/data/change": c})
      for c in _USER_CHANGES),
    *(("/data/request/path",      "/data/target",            _PERM,   {"/data/change": c})
      for c in _USER_CHANGES),
    ("/data/cli/owner",           "self",                    _PERM,   {}),
    ("/data/before/users/*/user", "self",                    _PERM,   _CONFIG),
    ("/data/after/users/*/user",  "self",                    _PERM,   _CONFIG),
    # Prefect's related resources (prefect_audit/eventmap.py _actor): Prefect Cloud's acting
    # user (or service account), a run's creating user
    ("/data/prefect/related/*",   "@/prefect.resource.name", _ALL,    {"@/prefect.resource.role": "actor"}),  # noqa: E501
    ("/data/prefect/related/*",   "@/prefect.resource.name", _ALL,    {"@/prefect.resource.role": "creator", **_USER}),  # noqa: E501
    # audit.* reads (audit_core/readlog.py query_filter): the actor a reader searched for
    ("/data/filter/actor",        "self",                    _READS,  {}),
)
# fmt: on

#: The built-in rules, after the file's own (``include_defaults``).
DEFAULT_RULES: Final[tuple[Rule, ...]] = tuple(
    Rule(pointer, "commit", subject, events, tuple(when.items()))
    for pointer, subject, events, when in _DEFAULTS
)

#: Nodes that fail closed (module docstring): run confs, flow parameters, model values, and the
#: confs of the event log's REST bodies (``record_conf``).
CLOSED: Final[tuple[str, ...]] = (
    "/data/conf",
    "/data/parameters",
    "/data/inputs/value",
    "/data/outputs/value",
    "/data/extra/conf",
    "/data/extra/dag_run_conf",
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One node to transform: its pointer in the view, the action, and (commit, encrypt) the
    data subject's identifier (never printed: ``repr`` hides it)."""

    pointer: str
    action: Literal["redact", "commit", "encrypt"]
    subject: str | None

    def __repr__(self) -> str:
        hidden = None if self.subject is None else "<hidden>"
        return f"Decision(pointer={self.pointer!r}, action={self.action!r}, subject={hidden})"


# -- patterns: a lazily built automaton over reference tokens -----------------------------------


def _compile(pattern: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for raw in pattern[1:].split("/"):
        if raw == "**":
            out += [_ANY, _MANY]
        else:
            out.append(_ANY if raw == "*" else unescape_token(raw))
    return tuple(out)


def _closure(
    pats: Sequence[tuple[str | int, ...]], states: set[tuple[int, int]]
) -> tuple[tuple[int, int], ...]:
    extra = {(i, p + 1) for i, p in states if p < len(pats[i]) and pats[i][p] == _MANY}
    return tuple(sorted(states | extra))


class _State:
    """The patterns still alive at a node: which accept it, whether any can match deeper."""

    __slots__ = ("accepting", "closed", "deeper", "live", "next", "pats", "states")

    def __init__(
        self, pats: Sequence[tuple[str | int, ...]], states: tuple[tuple[int, int], ...], rules: int
    ) -> None:
        self.pats, self.states = pats, states
        done = [i for i, p in states if p == len(pats[i])]
        self.accepting = tuple(i for i in done if i < rules)  # rule indices, file order
        self.closed = any(i >= rules for i in done)
        self.live = any(i < rules and p < len(pats[i]) for i, p in states)  # a rule, deeper
        self.deeper = any(p < len(pats[i]) for i, p in states)  # a rule or closed node, deeper
        self.next: dict[str, _State | None] = {}

    def step(self, token: str, rules: int) -> _State | None:
        if token in self.next:
            return self.next[token]
        moved: set[tuple[int, int]] = set()
        for i, p in self.states:
            pat = self.pats[i]
            if p < len(pat):
                want = pat[p]
                if want == _MANY:
                    moved.add((i, p))
                elif want in (_ANY, token):
                    moved.add((i, p + 1))
        state = _State(self.pats, _closure(self.pats, moved), rules) if moved else None
        if len(self.next) < _CACHE_CAP:
            self.next[token] = state
        return state


# -- the policy ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """An effective privacy policy (module docstring). Build it with :func:`load_policy`,
    :func:`parse_policy` or :func:`default_policy`."""

    rules: tuple[Rule, ...] = field(repr=False)
    closed: tuple[str, ...] = field(repr=False)
    source: str
    digest: str = ""
    _pats: tuple[tuple[str | int, ...], ...] = field(default=(), repr=False, compare=False)
    _roots: dict[str, _State] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        pats = tuple(_compile(p) for p in (*(r.pointer for r in self.rules), *self.closed))
        object.__setattr__(self, "_pats", pats)
        digest = "sha256:" + hashlib.sha256(canonical_bytes(self.to_json())).hexdigest()
        object.__setattr__(self, "digest", digest)

    def to_json(self) -> dict[str, JSON]:
        """The effective policy: version, every rule (defaults included) in order, closed."""
        return {
            "version": 1,
            "rules": [r.to_json() for r in self.rules],
            "closed": list(self.closed),
        }

    def _root(self, event: str) -> _State:
        root = self._roots.get(event)
        if root is None:
            n = len(self.rules)
            starts = {(i, 0) for i, r in enumerate(self.rules) if _event_matches(r.events, event)}
            starts |= {(n + j, 0) for j in range(len(self.closed))}
            root = _State(self._pats, _closure(self._pats, starts), n)
            if len(self._roots) >= _CACHE_CAP:
                self._roots.clear()
            self._roots[event] = root
        return root

    def decide(self, event: str, view: Mapping[str, JSON]) -> list[Decision]:
        """The nodes of ``view`` to transform, none nested in another, in document order."""
        walk = _Walk(self.rules, cast(JSON, view))
        root, n = self._root(event), len(self.rules)
        for name, value in view.items():
            state = root.step(name, n)
            if state is not None:
                walk.node(value, "/" + escape_token(name), state, False)
        return walk.out


class _Walk:
    """One :meth:`Policy.decide`: the view, its absolute pointers resolved once, the result."""

    __slots__ = ("memo", "n", "out", "rules", "view")

    def __init__(self, rules: tuple[Rule, ...], view: JSON) -> None:
        self.rules, self.view, self.n = rules, view, len(rules)
        self.memo: dict[str, object] = {}
        self.out: list[Decision] = []

    def node(self, value: JSON, ptr: str, state: _State, closed: bool) -> None:
        for i in state.accepting:
            rule = self.rules[i]
            if rule.when and not self.holds(rule.when, ptr):
                continue
            if rule.action != "keep" and value not in _EMPTY:
                subject = (
                    None if rule.action == "redact" else self.subject(rule.subject, ptr, value)
                )
                self.out.append(Decision(ptr, rule.action, subject))
            return
        is_container = isinstance(value, (dict, list))
        if closed and not (state.live and is_container):
            if value not in _EMPTY:  # a closed node's member no rule decided: fail closed
                self.out.append(Decision(ptr, "commit", self.subject(None, ptr, value)))
            return
        inner = closed or state.closed
        if not is_container:
            if inner and value not in _EMPTY:  # a closed scalar no rule decided
                self.out.append(Decision(ptr, "commit", self.subject(None, ptr, value)))
            return
        if not inner and not state.deeper:
            return
        members = value.items() if isinstance(value, dict) else enumerate(cast(list[JSON], value))
        for key, member in members:
            token = key if isinstance(key, str) else str(key)
            step = state.step(token, self.n)
            if step is None:
                if not inner:
                    continue
                step = _DEAD
            self.node(member, ptr + "/" + escape_token(token), step, inner)

    def at(self, spec: str, ptr: str) -> object:
        if spec.startswith("@"):
            return resolve(self.view, ptr + spec[1:])
        if spec not in self.memo:
            self.memo[spec] = resolve(self.view, spec)
        return self.memo[spec]

    def holds(self, when: tuple[tuple[str, JSON], ...], ptr: str) -> bool:
        for key, expected in when:
            found = self.at(key, ptr)
            if isinstance(expected, str):  # the common case: no canonical bytes to build
                if not (isinstance(found, str) and found == expected):
                    return False
            elif found is MISSING or canonical_bytes(found) != canonical_bytes(expected):
                return False
        return True

    def subject(self, spec: str | None, ptr: str, value: JSON) -> str | None:
        """The data subject of the node at ``ptr`` (module docstring: the rule's subject,
        then the closed subject); None when nothing names one (the value is then keyed for
        its record alone)."""
        user = self.at("/actor/type", ptr) == "user"
        if spec is not None and (spec != "/actor/id" or user):
            # an actor names a data subject only when it is a person: a service or process
            # id ("airflow", "scheduler") would pool every scheduled run under one subject
            text = _text(value if spec == "self" else self.at(spec, ptr))
            if text is not None:
                return text
        if user:
            actor = _text(self.at("/actor/id", ptr))
            if actor is not None:
                return actor
        # A rule that names where its subject is (a model digest's /data/data_subject) never
        # falls back to the value itself: a digest must not become an identifier in clear.
        return _text(value) if spec is None else None


_DEAD: Final = _State((), (), 0)


def _event_matches(patterns: tuple[str, ...], event: str) -> bool:
    return any(fnmatch.fnmatchcase(event, p) for p in patterns)


def _text(value: object) -> str | None:
    # Only a short string identifies someone: a number, a list or a whole batch would pool
    # unrelated records under one "subject" and sit in the store in clear as its identifier.
    if not isinstance(value, str) or not value or len(value) > MAX_SUBJECT_CHARS:
        return None
    return unicodedata.normalize("NFC", value)


def default_policy() -> Policy:
    """The built-in rules and closed nodes alone (a policy that is on with no file)."""
    return Policy(DEFAULT_RULES, CLOSED, "<default>")
