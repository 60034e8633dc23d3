"""The privacy policy (audit_core/privacy/policy.py): patterns, first match, keep, closed
nodes, filters, subjects, the built-in rules on record views shaped as the adapters write
them, the digest, every malformed file, and Hypothesis properties of decide().

Example files: tests/assets/privacy/policy_example.toml and .yaml (one policy, two formats).
"""

from __future__ import annotations

import re
import sys
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core.errors import AuditError, PolicyError
from audit_core.privacy.pointer import MISSING, resolve
from audit_core.privacy.policy import (
    CLOSED,
    DEFAULT_RULES,
    MAX_SUBJECT_CHARS,
    Decision,
    Policy,
    default_policy,
)
from audit_core.privacy.policyfile import load_policy, parse_policy

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "privacy"


def policy(*rules: dict[str, Any], defaults: bool = False, **top: Any) -> Policy:
    """A policy of these rules (without the built-in rules unless ``defaults``)."""
    doc = {"version": 1, "include_defaults": defaults, "rules": list(rules), **top}
    return parse_policy(doc, source="test.toml")


def decided(p: Policy, view: Mapping[str, Any], event: str = "x.y") -> list[tuple[str, str]]:
    """(pointer, action) of each decision."""
    return [(d.pointer, d.action) for d in p.decide(event, view)]


def subjects(p: Policy, view: Mapping[str, Any], event: str = "x.y") -> dict[str, str | None]:
    """pointer -> subject of each decision."""
    return {d.pointer: d.subject for d in p.decide(event, view)}


def view_of(data: Any, actor: Any = None, subject: Any = None) -> dict[str, Any]:
    """A record's view."""
    return {
        "actor": actor or {"type": "process", "id": "airflow"},
        "subject": subject or {},
        "data": data,
    }


class TestPatterns:
    def test_literal_pointer(self) -> None:
        """A literal pattern decides exactly its node."""
        p = policy({"pointer": "/data/a/b", "action": "redact"})
        assert [("/data/a/b", "redact")] == decided(p, view_of({"a": {"b": 1, "c": 2}, "b": 3}))

    def test_star_is_exactly_one_token(self) -> None:
        """'*' matches one token, never zero or two."""
        p = policy({"pointer": "/data/*/x", "action": "redact"})
        view = view_of({"x": 1, "a": {"x": 2, "b": {"x": 3}}, "l": [{"x": 4}]})
        assert [("/data/a/x", "redact")] == decided(p, view)

    def test_star_matches_list_items(self) -> None:
        """'*' matches each list index."""
        p = policy({"pointer": "/data/l/*/x", "action": "redact"})
        view = view_of({"l": [{"x": 4}, {"y": 5}, {"x": 6}]})
        assert [("/data/l/0/x", "redact"), ("/data/l/2/x", "redact")] == decided(p, view)

    def test_globstar_is_one_or_more_tokens(self) -> None:
        """'**' matches one or more tokens, at any depth, never zero."""
        p = policy({"pointer": "/data/**/email", "action": "commit"})
        view = view_of({"email": "top", "a": {"email": "a"}, "b": [{"c": {"email": "c"}}]})
        assert [("/data/a/email", "commit"), ("/data/b/0/c/email", "commit")] == decided(p, view)

    def test_globstar_anywhere(self) -> None:
        """'/**/email' finds an email member in actor, subject and data alike."""
        p = policy({"pointer": "/**/email", "action": "commit"})
        view = view_of({"email": "d"}, actor={"type": "user", "email": "x"}, subject={"email": "s"})
        expected = [
            ("/actor/email", "commit"),
            ("/subject/email", "commit"),
            ("/data/email", "commit"),
        ]
        assert expected == decided(p, view)

    def test_globstar_in_the_middle_and_at_the_end(self) -> None:
        """'/data/**' decides each member of data; '/data/**/x/**' needs something under x."""
        p = policy({"pointer": "/data/**", "action": "redact"})
        assert [("/data/a", "redact"), ("/data/b", "redact")] == decided(
            p, view_of({"a": {"z": 1}, "b": 2})
        )
        q = policy({"pointer": "/data/**/x/**", "action": "redact"})
        view = view_of({"k": {"x": {"y": 1}}, "x": 2})
        assert [("/data/k/x/y", "redact")] == decided(q, view)

    def test_escaped_tokens(self) -> None:
        """'~1' matches a '/' in a member name, '~0' a '~'; decisions are escaped pointers."""
        p = policy(
            {"pointer": "/data/a~1b", "action": "redact"},
            {"pointer": "/data/c~0d", "action": "redact"},
        )
        view = view_of({"a/b": 1, "c~d": 2, "a": {"b": 3}, "c~0d": 4})
        assert [("/data/a~1b", "redact"), ("/data/c~0d", "redact")] == decided(p, view)

    def test_literal_star_member_is_only_a_wildcard(self) -> None:
        """A member literally named '*' is reached by the wildcard (which also takes others)."""
        p = policy({"pointer": "/data/*", "action": "redact"})
        assert [("/data/*", "redact"), ("/data/b", "redact")] == decided(
            p, view_of({"*": 1, "b": 2})
        )

    def test_empty_member_name(self) -> None:
        """'/data/' names the member whose name is the empty string."""
        p = policy({"pointer": "/data/", "action": "redact"})
        assert [("/data/", "redact")] == decided(p, view_of({"": 1, "a": 2}))

    def test_pattern_on_a_scalar_path_finds_nothing(self) -> None:
        """A pattern deeper than the document goes is simply not matched."""
        p = policy({"pointer": "/data/a/b/c", "action": "redact"})
        assert [] == decided(p, view_of({"a": "text"}))


class TestOrder:
    def test_first_rule_in_file_order_wins(self) -> None:
        """Of two rules matching one node, the first in the file decides it."""
        p = policy(
            {"pointer": "/data/*", "action": "redact"},
            {"pointer": "/data/a", "action": "commit"},
        )
        assert [("/data/a", "redact")] == decided(p, view_of({"a": "v"}))
        q = policy(
            {"pointer": "/data/a", "action": "commit"},
            {"pointer": "/data/*", "action": "redact"},
        )
        assert [("/data/a", "commit")] == decided(q, view_of({"a": "v"}))

    def test_user_rules_before_defaults(self) -> None:
        """A file's rule beats the built-in rule for the same node; the built-in rules still
        decide the rest (an operator's process actor on an audit.* event)."""
        p = policy({"pointer": "/data/triggering_user", "action": "redact"}, defaults=True)
        view = view_of({"triggering_user": "ann"})
        assert [("/data/triggering_user", "redact")] == decided(p, view)
        assert [("/actor/id", "commit"), ("/data/triggering_user", "redact")] == decided(
            p, view, "audit.read"
        )

    def test_keep_stops_descent(self) -> None:
        """Nothing under a kept node is decided, built-in rules and closed nodes included."""
        p = policy({"pointer": "/data", "action": "keep"}, defaults=True)
        view = view_of(
            {"triggering_user": "ann", "conf": {"a": 1}}, actor={"type": "user", "id": "ann"}
        )
        assert [("/actor/id", "commit")] == decided(p, view)

    def test_decided_node_not_descended(self) -> None:
        """A transformed node is one decision; rules for what is under it are not consulted."""
        p = policy(
            {"pointer": "/data/conf", "action": "encrypt"},
            {"pointer": "/data/conf/a", "action": "redact"},
        )
        assert [("/data/conf", "encrypt")] == decided(p, view_of({"conf": {"a": 1}}))

    def test_shallower_node_decided_first(self) -> None:
        """Top-down: a node's own rule decides before a later, deeper rule is reached."""
        p = policy(
            {"pointer": "/data/a/b", "action": "redact"},
            {"pointer": "/data/a", "action": "commit"},
        )
        assert [("/data/a", "commit")] == decided(p, view_of({"a": {"b": 1}}))

    def test_document_order(self) -> None:
        """Decisions come in the view's member order (actor, subject, data as given)."""
        p = policy({"pointer": "/**/x", "action": "redact"})
        view = {"data": {"x": 1, "a": {"x": 2}}, "actor": {"x": 3}, "subject": {"x": 4}}
        expected = ["/data/x", "/data/a/x", "/actor/x", "/subject/x"]
        assert expected == [ptr for ptr, _ in decided(p, view)]

    def test_empty_values_are_not_transformed(self) -> None:
        """null, "", {} and [] carry nothing to hide: no decision, and no subject named "null"."""
        p = policy({"pointer": "/data/*", "action": "commit"})
        view = view_of({"a": None, "b": "", "c": {}, "d": [], "e": 0, "f": False})
        assert [("/data/e", "commit"), ("/data/f", "commit")] == decided(p, view)


class TestClosed:
    def test_members_of_closed_node_committed(self) -> None:
        """Every member of a closed node no rule decided is committed as a whole."""
        p = policy()
        view = view_of({"conf": {"a": {"deep": [1, 2]}, "b": "x", "c": [1]}, "state": "ok"})
        expected = [
            ("/data/conf/a", "commit"),
            ("/data/conf/b", "commit"),
            ("/data/conf/c", "commit"),
        ]
        assert expected == decided(p, view)

    def test_list_items_of_closed_node(self) -> None:
        """A closed list's items are its members."""
        p = policy(closed=["/data/items"])
        assert [("/data/items/0", "commit"), ("/data/items/1", "commit")] == decided(
            p, view_of({"items": ["a", {"b": 1}]})
        )

    def test_keep_rule_for_member_wins(self) -> None:
        """A keep rule for a member of a closed node leaves it readable."""
        p = policy({"pointer": "/data/conf/model_version", "action": "keep"})
        view = view_of({"conf": {"model_version": "3", "email": "a@x"}})
        assert [("/data/conf/email", "commit")] == decided(p, view)

    def test_rule_for_member_decides_it(self) -> None:
        """A member a rule decides gets that rule's action, not the closed commit."""
        p = policy({"pointer": "/data/conf/notes", "action": "redact"})
        view = view_of({"conf": {"notes": "n", "x": 1}})
        assert [("/data/conf/notes", "redact"), ("/data/conf/x", "commit")] == decided(p, view)

    def test_deeper_keep_makes_the_member_closed(self) -> None:
        """A keep below a member opens only that node; its siblings are committed one by one."""
        p = policy({"pointer": "/data/conf/model/version", "action": "keep"})
        view = view_of({"conf": {"model": {"version": "3", "owner": "ann"}, "other": 1}})
        expected = [("/data/conf/model/owner", "commit"), ("/data/conf/other", "commit")]
        assert expected == decided(p, view)

    def test_closed_node_decided_by_a_rule(self) -> None:
        """A closed node a rule decides is just that rule (the default inputs commit, and so
        does their digest, under the data subject)."""
        p = default_policy()
        view = view_of({"data_subject": "c-1", "inputs": {"value": {"age": 41}, "sha256": "ab"}})
        decisions = p.decide("model.invoked", view)
        assert [
            Decision("/data/data_subject", "commit", "c-1"),
            Decision("/data/inputs/value", "commit", "c-1"),
            Decision("/data/inputs/sha256", "commit", "c-1"),
        ] == decisions

    def test_keep_of_closed_node_opens_it(self) -> None:
        """keep on a built-in closed node leaves all of it."""
        p = policy({"pointer": "/data/conf", "action": "keep"})
        assert [] == decided(p, view_of({"conf": {"a": 1}}))

    def test_closed_scalar_committed(self) -> None:
        """A closed node that is a scalar, with no rule, is committed itself."""
        p = policy(closed=["/data/note"])
        assert [("/data/note", "commit")] == decided(p, view_of({"note": "free text"}))

    def test_closed_empty_members_skipped(self) -> None:
        """Empty members of a closed node stay as they are."""
        p = policy()
        assert [("/data/conf/b", "commit")] == decided(p, view_of({"conf": {"a": None, "b": 1}}))

    def test_builtin_closed_without_defaults(self) -> None:
        """include_defaults = false drops the built-in rules, never the built-in closed nodes."""
        p = policy()
        assert CLOSED == p.closed
        assert [("/data/parameters/x", "commit")] == decided(p, view_of({"parameters": {"x": 1}}))

    def test_file_closed_with_wildcards(self) -> None:
        """A closed entry may be a pattern."""
        p = policy(closed=["/data/*/free"])
        view = view_of({"a": {"free": {"k": 1}}, "b": {"free": {"k": 2}}})
        assert [("/data/a/free/k", "commit"), ("/data/b/free/k", "commit")] == decided(p, view)

    def test_closed_member_subject_is_the_user(self) -> None:
        """A closed member's subject is the acting user, else the member's own value when it
        is a string, else none (keyed for its record alone)."""
        p = policy()
        user = view_of({"conf": {"a": 1}}, actor={"type": "user", "id": "Ann"})
        assert {"/data/conf/a": "Ann"} == subjects(p, user)
        process = view_of({"conf": {"a": {"k": 1}, "b": "bob"}})
        assert {"/data/conf/a": None, "/data/conf/b": "bob"} == subjects(p, process)


class TestFilters:
    def test_events_fnmatch(self) -> None:
        """A rule with events applies only to matching event types (case-sensitive)."""
        p = policy({"pointer": "/data/a", "action": "redact", "events": ["dagrun.*", "x.one"]})
        view = view_of({"a": 1})
        assert [("/data/a", "redact")] == decided(p, view, "dagrun.started")
        assert [("/data/a", "redact")] == decided(p, view, "x.one")
        assert [] == decided(p, view, "task.started")
        assert [] == decided(p, view, "DAGRUN.started")

    def test_later_rule_when_events_do_not_match(self) -> None:
        """A rule filtered out by its events lets the next matching rule decide."""
        p = policy(
            {"pointer": "/data/a", "action": "keep", "events": ["task.*"]},
            {"pointer": "/data/a", "action": "redact"},
        )
        assert [] == decided(p, view_of({"a": 1}), "task.started")
        assert [("/data/a", "redact")] == decided(p, view_of({"a": 1}), "dagrun.started")

    def test_when_equalities(self) -> None:
        """All of when's equalities must hold on the view."""
        p = policy(
            {
                "pointer": "/data/a",
                "action": "redact",
                "when": {"/actor/type": "user", "/data/n": 2},
            }
        )
        user = {"type": "user", "id": "u"}
        assert [("/data/a", "redact")] == decided(p, view_of({"a": 1, "n": 2}, actor=user))
        assert [] == decided(p, view_of({"a": 1, "n": 3}, actor=user))
        assert [] == decided(p, view_of({"a": 1, "n": 2}))
        assert [] == decided(p, view_of({"a": 1}, actor=user))

    def test_when_compares_json_types(self) -> None:
        """true is not 1 and "1" is not 1 (JSON equality, not Python's)."""
        p = policy({"pointer": "/data/a", "action": "redact", "when": {"/data/f": True}})
        assert [] == decided(p, view_of({"a": 1, "f": 1}))
        assert [("/data/a", "redact")] == decided(p, view_of({"a": 1, "f": True}))
        q = policy({"pointer": "/data/a", "action": "redact", "when": {"/data/f": 1}})
        assert [] == decided(q, view_of({"a": 1, "f": "1"}))
        assert [("/data/a", "redact")] == decided(q, view_of({"a": 1, "f": 1.0}))

    def test_when_null_and_missing(self) -> None:
        """when = null holds for a null member, not for a missing one."""
        p = policy({"pointer": "/data/a", "action": "redact", "when": {"/data/f": None}})
        assert [("/data/a", "redact")] == decided(p, view_of({"a": 1, "f": None}))
        assert [] == decided(p, view_of({"a": 1}))

    def test_when_relative_to_the_node(self) -> None:
        """A '@/…' key of when is read relative to the node being decided."""
        p = policy({"pointer": "/data/l/*", "action": "redact", "when": {"@/role": "actor"}})
        view = view_of({"l": [{"role": "actor"}, {"role": "flow"}, {"role": "actor"}]})
        assert [("/data/l/0", "redact"), ("/data/l/2", "redact")] == decided(p, view)


class TestSubjects:
    user: ClassVar[dict[str, str]] = {"type": "user", "id": "Ann"}

    def test_default_subject_is_self(self) -> None:
        """A commit without subject is its own value's subject."""
        p = policy({"pointer": "/data/a", "action": "commit"})
        assert {"/data/a": "bob"} == subjects(p, view_of({"a": "bob"}, actor=self.user))

    @pytest.mark.parametrize("value", [{"b": [True, None], "a": 1.5}, 42, 4.5, True, ["ann"]])
    def test_self_non_string_names_no_subject(self, value: Any) -> None:
        """A number, boolean, list or object names no data subject: the decision's subject
        is None (the value is keyed for its record alone)."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "self"})
        assert [Decision("/data/a", "commit", None)] == p.decide("x", view_of({"a": value}))

    def test_subject_length_limit(self) -> None:
        """A string of MAX_SUBJECT_CHARS (256) names a subject; one character more does not."""
        assert 256 == MAX_SUBJECT_CHARS
        p = policy({"pointer": "/data/a", "action": "commit"})
        longest = "x" * MAX_SUBJECT_CHARS
        assert {"/data/a": longest} == subjects(p, view_of({"a": longest}))
        assert {"/data/a": None} == subjects(p, view_of({"a": longest + "x"}))

    def test_long_subject_falls_back_to_the_user(self) -> None:
        """A subject pointer naming a too-long text falls back to the acting user."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "/data/id"})
        view = view_of({"a": "x", "id": "y" * 257}, actor=self.user)
        assert {"/data/a": "Ann"} == subjects(p, view)

    def test_absolute_subject_of_original_view(self) -> None:
        """'/abs' reads the original view, even a node that is itself committed."""
        p = policy(
            {"pointer": "/data/who", "action": "commit"},
            {"pointer": "/data/what", "action": "encrypt", "subject": "/data/who"},
        )
        assert {"/data/who": "cus-7", "/data/what": "cus-7"} == subjects(
            p, view_of({"who": "cus-7", "what": {"x": 1}})
        )

    def test_absolute_subject_non_string(self) -> None:
        """A non-string subject value names no one: the acting user stands in, and with no
        user acting the decision has no subject (never the node's own text)."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "/data/id"})
        assert {"/data/a": None} == subjects(p, view_of({"a": "x", "id": 1234}))
        assert {"/data/a": None} == subjects(p, view_of({"a": 7, "id": [1]}))
        assert {"/data/a": "Ann"} == subjects(p, view_of({"a": "x", "id": 1234}, actor=self.user))

    def test_relative_subject(self) -> None:
        """'@/rel' reads under the node itself."""
        p = policy({"pointer": "/data/l/*", "action": "commit", "subject": "@/name"})
        view = view_of({"l": [{"name": "ann", "k": 1}, {"name": "bob"}]})
        assert {"/data/l/0": "ann", "/data/l/1": "bob"} == subjects(p, view)

    @pytest.mark.parametrize("found", [{}, {"id": None}, {"id": ""}])
    def test_missing_subject_falls_back_to_user(self, found: dict[str, Any]) -> None:
        """Missing, null or "" subject: the acting user."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "/data/id"})
        assert {"/data/a": "Ann"} == subjects(p, view_of({"a": "x", **found}, actor=self.user))

    @pytest.mark.parametrize("spec", ["@/id", "/data/id"])
    @pytest.mark.parametrize(
        "actor", [None, {"type": "anonymous", "id": "-"}, {"type": "process", "id": "ann@h"}]
    )
    def test_missing_subject_without_user_is_none(
        self, spec: str, actor: dict[str, str] | None
    ) -> None:
        """A subject pointer resolving to nothing, no user acting: no subject (keyed for its
        record alone), never the value itself nor a non-user actor."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": spec})
        assert [Decision("/data/a", "commit", None)] == p.decide("x", view_of({"a": "x"}, actor))
        assert [Decision("/data/a", "commit", None)] == p.decide(
            "audit.read", view_of({"a": "x", "id": None}, actor)
        )

    def test_user_actor_with_empty_id_is_not_a_subject(self) -> None:
        """A user actor with an empty id does not stand in: no subject (nor the value)."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "/data/id"})
        assert {"/data/a": None} == subjects(
            p, view_of({"a": "x"}, actor={"type": "user", "id": ""})
        )

    @pytest.mark.parametrize("value", [{"a": 1}, 42, ["ann"], "y" * (MAX_SUBJECT_CHARS + 1)])
    def test_self_without_a_subject_value_falls_back_to_the_user(self, value: Any) -> None:
        """subject "self" on a value naming no one (non-string, too long): the acting user."""
        p = policy({"pointer": "/data/a", "action": "commit", "subject": "self"})
        assert {"/data/a": "Ann"} == subjects(p, view_of({"a": value}, actor=self.user))

    def test_closed_member_is_its_own_subject(self) -> None:
        """A closed node's member (no rule), no user acting: its own short text is its
        subject; a non-text member names none."""
        p = policy()
        view = view_of({"conf": {"email": "c@x.org", "n": 3}})
        assert {"/data/conf/email": "c@x.org", "/data/conf/n": None} == subjects(p, view)

    def test_nfc_no_folding_no_stripping(self) -> None:
        """Subjects are NFC-normalized and otherwise exact: case and spaces kept."""
        p = policy({"pointer": "/data/a", "action": "commit"})
        decomposed = unicodedata.normalize("NFD", " Zoë ")
        assert {"/data/a": " Zo\u00eb "} == subjects(p, view_of({"a": decomposed}))
        assert {"/data/a": "ALICE"} == subjects(p, view_of({"a": "ALICE"}))

    def test_redact_has_no_subject(self) -> None:
        """A redaction names no subject."""
        p = policy({"pointer": "/data/a", "action": "redact"})
        assert [Decision("/data/a", "redact", None)] == p.decide("x", view_of({"a": "v"}))

    def test_repr_hides_subject(self) -> None:
        """A decision's repr never shows its subject."""
        text = repr(Decision("/data/a", "commit", "alice@example.org"))
        assert "alice" not in text
        assert "/data/a" in text


class TestDefaults:
    """The built-in rules on views shaped as airflow_audit and prefect_audit write them."""

    p = default_policy()

    def test_airflow_dagrun_started(self) -> None:
        """A manually triggered run: actor, triggering user, conf digest, conf members."""
        view = {
            "actor": {"type": "user", "id": "admin"},
            "subject": {
                "dag_id": "etl",
                "run_id": "manual__2026-12-05",
                "run_type": "manual",
                "logical_date": "2026-12-05T00:00:00Z",
                "dag_version": "0193",
                "bundle_version": None,
            },
            "data": {
                "state": "running",
                "msg": None,
                "triggered_by": "rest_api",
                "triggering_user": "admin",
                "started_at": "2026-12-05T00:00:01Z",
                "ended_at": None,
                "conf_sha256": "9f" * 32,
                "conf": {"customer_email": "c@x.org", "limit": 10},
            },
        }
        expected = {
            "/actor/id": "admin",
            "/data/triggering_user": "admin",
            "/data/conf_sha256": "admin",
            "/data/conf/customer_email": "admin",
            "/data/conf/limit": "admin",
        }
        assert expected == subjects(self.p, view, "dagrun.started")

    def test_airflow_scheduled_task_record_untouched(self) -> None:
        """A scheduled task's record (a worker's process actor) is untouched."""
        view = {
            "actor": {"type": "process", "id": "airflow"},
            "subject": {
                "dag_id": "etl",
                "task_id": "load",
                "run_id": "scheduled__x",
                "try_number": 1,
            },
            "data": {"state": "success", "started_at": "t", "ended_at": "t", "pid": 7},
        }
        assert [] == decided(self.p, view, "task.succeeded")

    @pytest.mark.parametrize("kind", ["system", "service", "anonymous"])
    def test_other_actor_types_kept(self, kind: str) -> None:
        """Only user and process actors are committed by default."""
        view = view_of({"state": "success"}, actor={"type": kind, "id": "airflow@host"})
        assert [] == decided(self.p, view, "task.succeeded")

    @pytest.mark.parametrize(
        "event", ["audit.read", "audit.exported", "privacy.erased", "privacy.opened"]
    )
    def test_cli_process_actor_committed(self, event: str) -> None:
        """The CLI operator's default actor process:USER@HOST is committed under itself on
        its own events (audit.*, privacy.*)."""
        view = view_of({"state": "ok"}, actor={"type": "process", "id": "ann@host-1"})
        assert {"/actor/id": "ann@host-1"} == subjects(self.p, view, event)

    @pytest.mark.parametrize(
        "event", ["custom.event", "task.succeeded", "dagrun.started", "model.invoked", "audit"]
    )
    def test_worker_process_actor_kept(self, event: str) -> None:
        """A worker's or adapter's process actor is kept on any other event."""
        view = view_of({"state": "ok"}, actor={"type": "process", "id": "ann@host-1"})
        assert [] == decided(self.p, view, event)

    def test_airflow_cli_full_command(self) -> None:
        """An event log row's CLI command line is committed whole under the row's owner."""
        view = view_of(
            {
                "event": "cli_users_create",
                "owner": "root",
                "extra": {"full_command": ["airflow", "users", "create", "--username", "bob"]},
            }
        )
        expected = {"/data/owner": "root", "/data/extra/full_command": "root"}
        assert expected == subjects(self.p, view, "cli.users_create")

    @pytest.mark.parametrize(
        "actor",
        [
            {"type": "process", "id": "airflow"},
            {"type": "system", "id": "scheduler"},
            {"type": "service", "id": "prefect"},
        ],
    )
    def test_run_digest_without_a_user_names_no_subject(self, actor: dict[str, str]) -> None:
        """A scheduled run's conf and parameters digests (no person acting) are keyed for
        their record alone, not under the worker's or service's id."""
        view = {
            "actor": actor,
            "subject": {"dag_id": "etl", "parameters_sha256": "77" * 32},
            "data": {"conf_sha256": "9f" * 32, "parameters_sha256": "77" * 32},
        }
        expected = {
            "/subject/parameters_sha256": None,
            "/data/conf_sha256": None,
            "/data/parameters_sha256": None,
        }
        assert expected == subjects(self.p, view, "dagrun.started")

    def test_prefect_subject_parameters_digest(self) -> None:
        """A Prefect run's subject parameters digest is committed under the acting user."""
        view = {
            "actor": {"type": "user", "id": "carol"},
            "subject": {"flow_run_id": "cd1a", "parameters_sha256": "77" * 32},
            "data": {},
        }
        expected = {"/actor/id": "carol", "/subject/parameters_sha256": "carol"}
        assert expected == subjects(self.p, view, "flow_run.running")

    def test_airflow_event_log_row(self) -> None:
        """airflow_audit/eventmap.py: owner and display name, conf digests of the body."""
        view = {
            "actor": {"type": "user", "id": "Ann"},
            "subject": {"dag_id": "etl"},
            "data": {
                "log_id": 7,
                "event": "trigger_dag_run",
                "owner": "Ann",
                "owner_display_name": "Ann Example",
                "dag_id": "etl",
                "extra": {"method": "POST", "conf": "[REDACTED]", "value_sha256": {"conf": "ab"}},
            },
        }
        expected = {
            "/actor/id": "Ann",
            "/data/owner": "Ann",
            "/data/owner_display_name": "Ann",
            "/data/extra/conf": "Ann",
            "/data/extra/value_sha256": "Ann",
        }
        assert expected == subjects(self.p, view, "dagrun.triggered")

    def test_airflow_access_login_and_failure(self) -> None:
        """access.py: the user, the tried username, the client address."""
        login = {
            "actor": {"type": "user", "id": "ann"},
            "subject": {},
            "data": {
                "user": "ann",
                "authenticator": "simple",
                "client": "10.0.0.7",
                "user_agent": "curl/8",
                "method": "POST",
                "path": "/auth/token",
                "status": 201,
            },
        }
        expected = {"/actor/id": "ann", "/data/user": "ann", "/data/client": "ann"}
        assert expected == subjects(self.p, login, "access.login")
        failed = {
            "actor": {"type": "anonymous", "id": "-"},
            "subject": {},
            "data": {"username": "mallory", "status": 401, "client": "10.0.0.9", "path": "/x"},
        }
        expected = {"/data/username": "mallory", "/data/client": "mallory"}
        assert expected == subjects(self.p, failed, "access.login_failed")

    def test_airflow_access_denied_anonymous(self) -> None:
        """A 401: no user; the address names no subject (keyed for its record alone)."""
        view = view_of(
            {"method": "GET", "path": "/api", "status": 401, "user": None, "client": "10.0.0.1"},
            actor={"type": "anonymous", "id": "-"},
        )
        assert {"/data/client": None} == subjects(self.p, view, "access.denied")

    def test_airflow_permission_user_created(self) -> None:
        """permissions.py: the created user, the request path naming them, the actor."""
        view = {
            "actor": {"type": "user", "id": "admin"},
            "subject": {},
            "data": {
                "authenticator": "fab",
                "change": "user.created",
                "target": "bob",
                "before": None,
                "after": {"active": True, "roles": ["Viewer"]},
                "digest": "ab",
                "observed": "request",
                "request": {"method": "POST", "path": "/auth/fab/v1/users/bob"},
            },
        }
        expected = {"/actor/id": "admin", "/data/target": "bob", "/data/request/path": "bob"}
        assert expected == subjects(self.p, view, "permission.changed")

    def test_airflow_permission_role_change_keeps_role_name(self) -> None:
        """A role's name is not personal: only the CLI row's owner is committed."""
        view = view_of(
            {
                "change": "role.created",
                "target": "Ops",
                "observed": "poll",
                "cli": {"owner": "root", "log_id": 4, "event": "cli_roles_create"},
            }
        )
        expected = {"/data/cli/owner": "root"}
        assert expected == subjects(self.p, view, "permission.changed")

    def test_airflow_simple_config_change(self) -> None:
        """SimpleAuthManager's user lists before and after: each user name."""
        users = [{"user": "ann", "role": "admin"}, {"user": "bob", "role": "viewer"}]
        view = view_of(
            {
                "change": "config",
                "target": "simple_auth_manager",
                "before": {"all_admins": False, "users": users[:1]},
                "after": {"all_admins": False, "users": users},
            }
        )
        expected = {
            "/data/before/users/0/user": "ann",
            "/data/after/users/0/user": "ann",
            "/data/after/users/1/user": "bob",
        }
        assert expected == subjects(self.p, view, "permission.changed")

    def test_prefect_flow_run(self) -> None:
        """A Prefect flow run: created_by, parameters digest, parameters, the creator."""
        view = {
            "actor": {"type": "user", "id": "carol"},
            "subject": {"flow_run_id": "cd1a", "flow": "etl"},
            "data": {
                "state": "RUNNING",
                "created_by": {"id": "7a0c", "type": "USER", "display_value": "carol"},
                "parameters_sha256": "77" * 32,
                "parameters": {"customer": "c-9", "n": 3},
                "prefect": {
                    "event": "prefect.flow-run.Running",
                    "resource": {"prefect.resource.id": "prefect.flow-run.cd1a"},
                    "related": [
                        {
                            "prefect.resource.id": "prefect.deployment.c817",
                            "prefect.resource.role": "deployment",
                            "prefect.resource.name": "cap-dep",
                        },
                        {
                            "prefect.resource.id": "prefect-cloud.user.7a0c",
                            "prefect.resource.role": "creator",
                            "prefect.resource.name": "carol",
                        },
                    ],
                },
            },
        }
        expected = {
            "/actor/id": "carol",
            "/data/created_by": "carol",
            "/data/parameters_sha256": "carol",
            "/data/parameters/customer": "carol",
            "/data/parameters/n": "carol",
            "/data/prefect/related/1": "carol",
        }
        assert expected == subjects(self.p, view, "flow_run.running")

    def test_prefect_created_by_shapes(self) -> None:
        """created_by is committed whatever created the run; its subject is its display value
        (a plain string has none: no subject, keyed for its record alone)."""
        deployment = {"id": "c817", "type": "DEPLOYMENT", "display_value": "cap-dep"}
        service = {"type": "service", "id": "prefect"}
        assert {"/data/created_by": "cap-dep"} == subjects(
            self.p, view_of({"created_by": deployment}, actor=service), "flow_run.created"
        )
        assert {"/data/created_by": None} == subjects(
            self.p, view_of({"created_by": "dave"}, actor=service), "flow_run.created"
        )

    def test_prefect_deployment_creator_kept(self) -> None:
        """A run created by a deployment (no person acting) keeps its related resources and
        its process actor: nothing is decided."""
        related = [{"prefect.resource.role": "creator", "prefect.resource.name": "cap-dep"}]
        view = view_of(
            {"prefect": {"related": related}}, actor={"type": "process", "id": "prefect"}
        )
        assert [] == decided(self.p, view, "flow_run.running")

    def test_prefect_cloud_login(self) -> None:
        """tests/prefect/fixtures/events/cloud.json's login: user, resource, related actor."""
        user = {
            "prefect.resource.id": "prefect-cloud.user.7a0c6a3e",
            "prefect.resource.name": "alice",
        }
        view = {
            "actor": {"type": "user", "id": "alice"},
            "subject": {},
            "data": {
                "user": "alice",
                "client": None,
                "reason": "logged-in",
                "prefect": {
                    "event": "prefect-cloud.user.logged-in",
                    "resource": user,
                    "related": [
                        {**user, "prefect.resource.role": "actor"},
                        {
                            "prefect.resource.id": "prefect-cloud.account.5e1b",
                            "prefect.resource.name": "acme",
                            "prefect.resource.role": "account",
                        },
                    ],
                },
            },
        }
        expected = {
            "/actor/id": "alice",
            "/data/user": "alice",
            "/data/prefect/resource": "alice",
            "/data/prefect/related/0": "alice",
        }
        assert expected == subjects(self.p, view, "access.login")

    def test_model_invoked_values(self) -> None:
        """model.invoked: data subject, inputs and outputs values and digests under the data
        subject; the worker's process actor kept."""
        view = view_of(
            {
                "model": "churn",
                "version": "3",
                "data_subject": "cust-42",
                "inputs": {"sha256": "aa", "value": [1, 2]},
                "outputs": {"sha256": "bb", "value": 0.7},
            }
        )
        expected = {
            "/data/data_subject": "cust-42",
            "/data/inputs/sha256": "cust-42",
            "/data/inputs/value": "cust-42",
            "/data/outputs/sha256": "cust-42",
            "/data/outputs/value": "cust-42",
        }
        assert expected == subjects(self.p, view, "model.invoked")

    def test_model_values_without_data_subject(self) -> None:
        """No data subject: the acting user, else the value itself."""
        view = view_of({"inputs": {"value": {"a": 1}}}, actor={"type": "user", "id": "u1"})
        assert {"/actor/id": "u1", "/data/inputs/value": "u1"} == subjects(self.p, view)

    def test_model_values_without_any_subject(self) -> None:
        """No data subject and no acting user: values and digests name no one (subject None,
        each keyed for its record alone), the process actor kept."""
        view = view_of(
            {
                "inputs": {"value": {"a": 1}, "sha256": "aa" * 32},
                "outputs": {"value": [0.7], "sha256": "bb" * 32},
            }
        )
        expected = {
            "/data/inputs/sha256": None,
            "/data/inputs/value": None,
            "/data/outputs/sha256": None,
            "/data/outputs/value": None,
        }
        assert expected == subjects(self.p, view, "model.invoked")

    def test_model_digest_without_subject_keyed_with_its_value(self) -> None:
        """Without a data subject a model value's digest is keyed like the value (per record)."""
        view = view_of({"inputs": {"value": {"a": 1}, "sha256": "aa" * 32}})
        subs = subjects(self.p, view, "model.invoked")
        assert (None, None) == (subs["/data/inputs/value"], subs["/data/inputs/sha256"])

    def test_audit_read(self) -> None:
        """readlog.py: the reader, and an actor the reader filtered by."""
        view = {
            "actor": {"type": "user", "id": "auditor"},
            "subject": {},
            "data": {"via": "cli", "filter": {"dag": "etl", "actor": "ann"}, "count": 3},
        }
        expected = {"/actor/id": "auditor", "/data/filter/actor": "ann"}
        assert expected == subjects(self.p, view, "audit.viewed")

    def test_defaults_table_is_commit_only_and_valid(self) -> None:
        """Every built-in rule commits, and survives the file parser unchanged."""
        assert {"commit"} == {r.action for r in DEFAULT_RULES}
        doc = {
            "version": 1,
            "include_defaults": False,
            "rules": [r.to_json() for r in DEFAULT_RULES],
        }
        assert default_policy().digest == parse_policy(doc, source="x").digest


class TestDigest:
    def test_digest_shape_and_stability(self) -> None:
        """sha256:<64 hex>, the same for two parses of one document."""
        doc = {"version": 1, "rules": [{"pointer": "/data/a", "action": "redact"}]}
        a, b = parse_policy(doc, source="a"), parse_policy(dict(doc), source="b")
        assert a.digest == b.digest
        assert a.digest.startswith("sha256:")
        assert 71 == len(a.digest)
        int(a.digest[7:], 16)

    def test_toml_and_yaml_give_one_digest(self) -> None:
        """The example policy in TOML and YAML means the same: one digest."""
        toml = load_policy(ASSETS / "policy_example.toml")
        yaml = load_policy(ASSETS / "policy_example.yaml")
        assert toml.digest == yaml.digest
        assert toml.to_json() == yaml.to_json()
        assert str(ASSETS / "policy_example.toml") == toml.source

    def test_minimal_file_is_the_default_policy(self) -> None:
        """version = 1 alone is the built-in policy."""
        assert default_policy().digest == load_policy(ASSETS / "policy_minimal.toml").digest
        assert "<default>" == default_policy().source

    def test_omitted_fields_mean_their_defaults(self) -> None:
        """events ["*"], subject "self" and when {} written out change nothing."""
        short = policy({"pointer": "/data/a", "action": "commit"})
        full = policy(
            {
                "pointer": "/data/a",
                "action": "commit",
                "subject": "self",
                "events": ["*"],
                "when": {},
            }
        )
        assert short.digest == full.digest

    def test_order_and_content_change_the_digest(self) -> None:
        """Rule order, an action and include_defaults are all part of the digest."""
        r1 = {"pointer": "/data/a", "action": "redact"}
        r2 = {"pointer": "/data/b", "action": "commit"}
        digests = {
            policy(r1, r2).digest,
            policy(r2, r1).digest,
            policy({**r1, "action": "keep"}, r2).digest,
            policy(r1, r2, defaults=True).digest,
            policy(r1, r2, closed=["/data/x"]).digest,
        }
        assert 5 == len(digests)

    def test_to_json_is_the_effective_policy(self) -> None:
        """to_json has version, every rule with defaults last, and the closed nodes."""
        p = policy({"pointer": "/data/a", "action": "keep"}, defaults=True, closed=["/data/x"])
        doc = p.to_json()
        assert 1 == doc["version"]
        rules = doc["rules"]
        assert isinstance(rules, list)
        assert 1 + len(DEFAULT_RULES) == len(rules)
        expected: dict[str, Any] = {
            "pointer": "/data/a",
            "action": "keep",
            "subject": None,
            "events": ["*"],
            "when": {},
        }
        assert expected == rules[0]
        assert [*CLOSED, "/data/x"] == doc["closed"]

    def test_repr_names_no_rule(self) -> None:
        """A policy's repr is its source and digest (a when value may name a person)."""
        p = policy({"pointer": "/data/a", "action": "redact", "when": {"/actor/id": "alice"}})
        assert "alice" not in repr(p)
        assert p.digest in repr(p)


class TestErrors:
    @pytest.mark.parametrize(
        ("doc", "message"),
        [
            ([], "test.toml: a policy is a table/mapping"),
            ({"version": 1, "rule": []}, "test.toml: unknown key(s) ['rule']"),
            ({}, "test.toml: version must be 1"),
            ({"version": 2}, "test.toml: version must be 1"),
            ({"version": "1"}, "test.toml: version must be 1"),
            ({"version": True}, "test.toml: version must be 1"),
            ({"version": 1, "include_defaults": "yes"}, "include_defaults is true or false"),
            ({"version": 1, "rules": {}}, "test.toml: rules is a list"),
            ({"version": 1, "closed": "/data/x"}, "test.toml: closed is a list"),
            (
                {"version": 1, "closed": ["data/x"]},
                "test.toml closed 1: 'data/x' is not a JSON pointer",
            ),
            ({"version": 1, "rules": ["x"]}, "test.toml rule 1: a rule is a table/mapping"),
        ],
    )
    def test_bad_document(self, doc: Any, message: str) -> None:
        """A malformed top level is named by file."""
        with pytest.raises(PolicyError) as info:
            parse_policy(doc, source="test.toml")
        assert message in str(info.value)

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                {"pointer": "/data/a", "action": "hide"},
                "test.toml rule 3: action 'hide' is not one of keep, redact, commit, encrypt",
            ),
            ({"pointer": "/data/a"}, "rule 3: action is missing (one of keep, redact, commit"),
            (
                {"pointer": "/data/a", "action": "keep", "extra": 1},
                "rule 3: unknown key(s) ['extra']",
            ),
            ({"action": "keep"}, "rule 3: pointer: a JSON pointer is a string"),
            (
                {"pointer": "data/a", "action": "keep"},
                "rule 3: pointer: 'data/a' is not a JSON pointer",
            ),
            ({"pointer": "", "action": "keep"}, "rule 3: pointer: '' is not a JSON pointer"),
            ({"pointer": "/data/a~2", "action": "keep"}, "rule 3: pointer: '/data/a~2' has a '~'"),
            ({"pointer": "/data/a~", "action": "keep"}, "has a '~' that is not '~0' or '~1'"),
            ({"pointer": "/a", "action": "keep", "subject": "self"}, "rule 3: subject is only for"),
            ({"pointer": "/a", "action": "redact", "subject": "/x"}, "rule 3: subject is only for"),
            (
                {"pointer": "/a", "action": "commit", "subject": "x"},
                "rule 3: subject: 'x' is not a",
            ),
            (
                {"pointer": "/a", "action": "commit", "subject": "@x"},
                "rule 3: subject: '@x' is not",
            ),
            (
                {"pointer": "/a", "action": "commit", "subject": 7},
                "rule 3: subject: a JSON pointer",
            ),
            (
                {"pointer": "/a", "action": "commit", "events": "x.*"},
                "rule 3: events is a non-empty",
            ),
            ({"pointer": "/a", "action": "commit", "events": []}, "rule 3: events is a non-empty"),
            ({"pointer": "/a", "action": "commit", "events": [1]}, "rule 3: events is a non-empty"),
            ({"pointer": "/a", "action": "commit", "when": []}, "rule 3: when is a table/mapping"),
            ({"pointer": "/a", "action": "commit", "when": {"x": 1}}, "rule 3: when: 'x' is not"),
            (
                {"pointer": "/a", "action": "commit", "when": {"/x": [1]}},
                "rule 3: when /x compares",
            ),
            (
                {"pointer": "/a", "action": "commit", "when": {"/x": float("nan")}},
                "not a JSON value",
            ),
        ],
    )
    def test_bad_rule(self, rule: dict[str, Any], message: str) -> None:
        """A malformed rule is named by file, rule number and field."""
        ok = {"pointer": "/data/ok", "action": "keep"}
        with pytest.raises(PolicyError) as info:
            parse_policy({"version": 1, "rules": [ok, ok, rule]}, source="test.toml")
        assert message in str(info.value)

    def test_errors_never_echo_when_values(self) -> None:
        """A bad when value is not quoted in the error (it may be a person's name)."""
        rule = {"pointer": "/a", "action": "commit", "when": {"/actor/id": ["alice@example.org"]}}
        with pytest.raises(PolicyError) as info:
            parse_policy({"version": 1, "rules": [rule]}, source="p.toml")
        assert "alice" not in str(info.value)

    def test_long_action_not_echoed(self) -> None:
        """An action that is not a short word is not quoted back."""
        rule = {"pointer": "/a", "action": "x" * 100}
        with pytest.raises(PolicyError) as info:
            parse_policy({"version": 1, "rules": [rule]}, source="p.toml")
        assert "x" * 100 not in str(info.value)

    def test_too_many_rules(self) -> None:
        """At most 10,000 rules."""
        rules = [{"pointer": "/a", "action": "keep"}] * 10_001
        with pytest.raises(PolicyError, match="at most 10000 rules"):
            parse_policy({"version": 1, "rules": rules}, source="p.toml")

    def test_policy_error_is_an_audit_error(self) -> None:
        """PolicyError is caught as AuditError (the CLI's one except)."""
        assert issubclass(PolicyError, AuditError)

    def write(self, tmp_path: Path, name: str, content: str | bytes) -> Path:
        """A file under tmp_path."""
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def test_file_not_found(self, tmp_path: Path) -> None:
        """A missing file is a PolicyError naming it."""
        missing = tmp_path / "nope.toml"
        with pytest.raises(PolicyError, match=f"{missing}: cannot read the policy file"):
            load_policy(missing)

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is not a policy file."""
        folder = tmp_path / "dir.toml"
        folder.mkdir()
        with pytest.raises(PolicyError, match="cannot read the policy file"):
            load_policy(folder)

    def test_unknown_suffix(self, tmp_path: Path) -> None:
        """Only .toml, .yaml and .yml."""
        path = self.write(tmp_path, "p.json", "{}")
        with pytest.raises(PolicyError, match=r"p.json: a policy file is .toml, .yaml or .yml"):
            load_policy(path)

    def test_not_utf8(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8."""
        path = self.write(tmp_path, "p.toml", b"version = 1\n# \xff\n")
        with pytest.raises(PolicyError, match=re.escape("p.toml: not UTF-8")):
            load_policy(path)

    def test_malformed_toml(self, tmp_path: Path) -> None:
        """Broken TOML is a PolicyError, not a traceback."""
        path = self.write(tmp_path, "p.toml", "version = = 1\n")
        with pytest.raises(PolicyError, match=re.escape("p.toml: not valid TOML")):
            load_policy(path)

    @pytest.mark.parametrize(
        "text",
        [
            "version: [1\n",
            "a: b: c\n",
            "x: !!python/object:os.system {}\n",
            'rules: [{when: {/actor/id: "alice@example.org" ]\n',
        ],
    )
    def test_malformed_yaml(self, tmp_path: Path, text: str) -> None:
        """Broken or unsafe YAML is a PolicyError with its line, quoting no value."""
        path = self.write(tmp_path, "p.yaml", text)
        with pytest.raises(PolicyError, match=re.escape("p.yaml: not valid YAML")) as info:
            load_policy(path)
        assert "alice" not in str(info.value)

    def test_yaml_top_level_not_a_mapping(self, tmp_path: Path) -> None:
        """A YAML list or scalar at the top is not a policy."""
        path = self.write(tmp_path, "p.yml", "- 1\n")
        with pytest.raises(PolicyError, match="a policy is a table/mapping"):
            load_policy(path)
        empty = self.write(tmp_path, "e.yml", "")
        with pytest.raises(PolicyError, match="a policy is a table/mapping"):
            load_policy(empty)

    def test_yaml_date_in_when(self, tmp_path: Path) -> None:
        """A YAML date is not a JSON value."""
        text = "version: 1\nrules:\n  - {pointer: /a, action: commit, when: {/d: 2026-12-05}}\n"
        path = self.write(tmp_path, "p.yaml", text)
        with pytest.raises(
            PolicyError, match=re.escape("p.yaml rule 1: when /d is not a JSON value")
        ):
            load_policy(path)

    def test_yaml_without_pyyaml(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """No PyYAML: a PolicyError saying so (sys.modules entry None makes import fail)."""
        monkeypatch.setitem(sys.modules, "yaml", None)
        path = self.write(tmp_path, "p.yaml", "version: 1\n")
        with pytest.raises(PolicyError, match="a YAML policy needs PyYAML"):
            load_policy(path)

    def test_file_too_large(self, tmp_path: Path) -> None:
        """More than 1 MiB is refused before parsing."""
        path = self.write(tmp_path, "p.toml", "version = 1\n" + "#" * (1 << 20) + "\n")
        with pytest.raises(PolicyError, match="at most 1048576 bytes"):
            load_policy(path)

    def test_rule_error_names_file_path(self, tmp_path: Path) -> None:
        """A bad rule in a file: the message names the file, rule and field."""
        text = 'version = 1\n[[rules]]\npointer = "/a"\naction = "hide"\n'
        path = self.write(tmp_path, "policy.toml", text)
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        expected = f"{path} rule 1: action 'hide' is not one of keep, redact, commit, encrypt"
        assert expected == str(info.value)


# -- properties -------------------------------------------------------------------------------

_NAMES = st.sampled_from(["a", "b", "email", "x/y", "t~", "*", ""])
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["", "s", "Ann"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_NAMES, inner, max_size=4)
    ),
    max_leaves=25,
)
_TOKEN = st.sampled_from(["a", "b", "email", "x~1y", "t~0", "*", "**", "0", "1"])
_PATTERN = st.lists(_TOKEN, min_size=1, max_size=4).map(lambda ts: "/" + "/".join(ts))
_RULE = st.fixed_dictionaries(
    {
        "pointer": st.one_of(_PATTERN, _PATTERN.map(lambda p: "/data" + p)),
        "action": st.sampled_from(["keep", "redact", "commit", "encrypt"]),
    }
)


def _views() -> st.SearchStrategy[dict[str, Any]]:
    actor = st.fixed_dictionaries(
        {"type": st.sampled_from(["user", "process"]), "id": st.sampled_from(["Ann", "", "p"])}
    )
    return st.fixed_dictionaries(
        {
            "actor": actor,
            "subject": st.dictionaries(_NAMES, _JSON, max_size=3),
            "data": st.dictionaries(
                st.sampled_from(["a", "b", "conf", "email", "x/y"]), _JSON, max_size=5
            ),
        }
    )


def _order(view: Any) -> list[str]:
    """Every pointer of the view in document order (pre-order)."""
    out: list[str] = []

    def walk(node: Any, ptr: str) -> None:
        out.append(ptr)
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, child in items:
            walk(child, ptr + "/" + str(key).replace("~", "~0").replace("/", "~1"))

    walk(view, "")
    return out


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        rules=st.lists(_RULE, max_size=6),
        closed=st.lists(_PATTERN.map(lambda p: "/data" + p), max_size=2),
        defaults=st.booleans(),
        view=_views(),
    )
    def test_decisions_are_disjoint_ordered_and_resolve(
        self, rules: list[dict[str, Any]], closed: list[str], defaults: bool, view: dict[str, Any]
    ) -> None:
        """No decided pointer is nested in or equal to another; each resolves to a non-empty
        value; they come in document order; a redaction names no subject, a commit/encrypt
        subject is None or a non-empty text of at most MAX_SUBJECT_CHARS."""
        p = policy(*rules, defaults=defaults, closed=closed)
        decisions = p.decide("dagrun.started", view)
        pointers = [d.pointer for d in decisions]
        assert len(set(pointers)) == len(pointers)
        for i, a in enumerate(pointers):
            for b in pointers[i + 1 :]:
                assert not b.startswith(a + "/")
                assert not a.startswith(b + "/")
        order = _order(view)
        assert sorted(pointers, key=order.index) == pointers
        for d in decisions:
            value = resolve(view, d.pointer)
            assert value is not MISSING
            assert value not in (None, "", {}, [])
            if d.action == "redact":
                assert d.subject is None
            else:
                assert d.subject is None or 0 < len(d.subject) <= MAX_SUBJECT_CHARS

    @settings(max_examples=200, deadline=None)
    @given(rules=st.lists(_RULE, min_size=1, max_size=6), view=_views())
    def test_keep_everything_decides_nothing(
        self, rules: list[dict[str, Any]], view: dict[str, Any]
    ) -> None:
        """Rules that only keep (the one closed node of these views kept too): no decision."""
        keeps = [{**r, "action": "keep"} for r in rules]
        p = policy(*keeps, {"pointer": "/data/conf", "action": "keep"})
        assert [] == p.decide("e", view)

    @settings(max_examples=200, deadline=None)
    @given(rules=st.lists(_RULE, max_size=6), view=_views())
    def test_decide_is_deterministic(
        self, rules: list[dict[str, Any]], view: dict[str, Any]
    ) -> None:
        """Deciding twice (cached automaton or fresh policy) gives one answer."""
        p = policy(*rules, defaults=True)
        first = p.decide("a.b", view)
        assert first == p.decide("a.b", view)
        assert first == policy(*rules, defaults=True).decide("a.b", view)


class TestCost:
    def test_large_decided_list_costs_what_a_small_one_does(self) -> None:
        """A 10,000-item list under a decided node is never walked (ratio, generous)."""
        p = policy({"pointer": "/data/conf", "action": "commit"})

        def best(items: int) -> float:
            view = view_of({"conf": {"rows": list(range(items))}, "other": list(range(items))})
            times = []
            for _ in range(50):
                start = time.perf_counter()
                p.decide("e", view)
                times.append(time.perf_counter() - start)
            return min(times)

        small, large = best(10), best(10_000)
        assert large < small * 20 + 1e-4
