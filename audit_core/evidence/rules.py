"""What a well-formed evidence pack states, as pure checks (:mod:`audit_core.evidence.check`
reads the zip and proves the records; these say whether what it read hangs together).

The operator holds the signing key and can re-sign anything, so nothing here trusts the
signature for more than who made the pack: a signed manifest of the wrong shape is named
field by field (never a traceback, never a loop over a stated size), the in-full files must
hold each record once, in seq order, inside the period's range and as many as the report
says, every sampled failure/access/permission/erasure record must be in its in-full file, and
the records just outside the stated range (``proofs/CHAIN.bounds.jsonl``) must be outside
the period while the first and last inside it: the range was not cut short.

>>> manifest_problems({"period": {}})[:2]
['manifest.json: period.since is not a string', 'manifest.json: period.until is not a string']
>>> bounds_expected(10, 20, 30)
[('before', 9), ('first', 10), ('last', 19), ('after', 20)]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeGuard

import orjson

from audit_core._jcs import canonical_bytes
from audit_core._merkle import verify_inclusion
from audit_core._record import leaf_hash
from audit_core.checkpoint import Checkpoint
from audit_core.errors import ProofError
from audit_core.evidence.controls import IN_FULL, in_full_category
from audit_core.evidence.sample import SAMPLE_DOMAIN

__all__ = [
    "HTML_ENVIRONMENT",
    "MAX_CHAINS",
    "MAX_SAMPLE",
    "MAX_SAMPLES",
    "PDF_ENVIRONMENT",
    "bounds_expected",
    "bounds_problems",
    "environment_differs",
    "in_full_problems",
    "in_period",
    "left_out",
    "manifest_problems",
    "proven",
    "report_problems",
    "report_size_problems",
    "sample_stream",
]

#: The most sampled proofs a chain's manifest entry may ask for (the CLI's default is 200).
MAX_SAMPLE = 100_000
#: The most sampled proofs of a whole pack, and the most chains (a ledger has a few).
MAX_SAMPLES = 1_000_000
MAX_CHAINS = 10_000
#: The longest list of each kind an honest report.json holds (collect/controls cap them),
#: by path; "*" is every item of a list. More is a forged report made to cost rendering.
REPORT_CAPS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("chains",), MAX_CHAINS),
    (("chains", "*", "checkpoint_history", "listed"), 40),
    (("controls",), 64),
    (("controls", "*", "records"), 100),
    (("controls", "*", "by_event"), 10_000),
    (("findings",), 10_000),
    (("transcript",), 10_000),
    (("not_evidenced",), 64),
    (("in_full",), 16),
    (("completeness", "reconcile", "listed"), 100),
    (("completeness", "gaps", "listed"), 100),
    (("completeness", "cadence", "listed"), 100),
    (("retention", "problems"), 100),
    (("retention", "uncovered"), 100),
    (("retention", "listed"), 100),
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_M = "manifest.json: "


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def manifest_problems(manifest: object) -> list[str]:
    """One sentence per field of the signed manifest that is not the shape a pack writes."""
    if not isinstance(manifest, dict):
        return [f"{_M}not a JSON object"]
    out: list[str] = []
    period = manifest.get("period")
    for key in ("since", "until"):
        if not isinstance(period, dict) or not isinstance(period.get(key), str):
            out.append(f"{_M}period.{key} is not a string")
    if not isinstance(manifest.get("origin"), str):
        out.append(f"{_M}origin is not a string")
    if manifest.get("verdict") not in ("PASS", "FAIL"):
        out.append(f"{_M}verdict is not 'PASS' or 'FAIL'")
    files = manifest.get("files")
    if not isinstance(files, dict):
        out.append(f"{_M}files is not an object")
    else:
        out += [
            f"{_M}files[{str(k)[:80]!r}] is not a SHA-256 (64 lowercase hex digits)"
            for k, v in files.items()
            if not _is_hex64(v)
        ]
    chains = manifest.get("chains")
    if not isinstance(chains, list):
        return [*out, f"{_M}chains is not a list"]
    if len(chains) > MAX_CHAINS:
        return [*out, f"{_M}{len(chains)} chains, more than {MAX_CHAINS}"]
    names: set[str] = set()
    for i, c in enumerate(chains):
        out += _chain_problems(f"chains[{i}]", c)
        if isinstance(c, dict) and isinstance(c.get("chain"), str):
            if c["chain"] in names:
                out.append(f"{_M}chains[{i}].chain {c['chain'][:80]!r} is listed twice")
            names.add(c["chain"])
    if out:
        return out
    total = sum(c["sample"]["n"] for c in chains)
    if total > MAX_SAMPLES:
        out.append(f"{_M}{total} sampled proofs in all, more than {MAX_SAMPLES}")
    if not any(c["records"] for c in chains):
        out.append("the pack evidences no records (no chain of the manifest has one)")
    return out


def _chain_problems(at: str, c: object) -> list[str]:
    if not isinstance(c, dict):
        return [f"{_M}{at} is not an object"]
    out = [
        f"{_M}{at}.{k} is not a string"
        for k in ("chain", "origin")
        if not isinstance(c.get(k), str)
    ]
    out += [
        f"{_M}{at}.{k} is not an integer" for k in ("records", "lo", "hi") if not _is_int(c.get(k))
    ]
    lo, hi, records = c.get("lo"), c.get("hi"), c.get("records")
    if _is_int(lo) and _is_int(hi) and not 0 <= lo <= hi:
        out.append(f"{_M}{at}: lo {lo} and hi {hi} are not 0 <= lo <= hi")
    elif _is_int(lo) and _is_int(hi) and _is_int(records) and not 0 <= records <= hi - lo:
        out.append(f"{_M}{at}.records {records} is not between 0 and hi - lo ({hi - lo})")
    sample = c.get("sample")
    n = sample.get("n") if isinstance(sample, dict) else None
    if not _is_int(n) or not 0 <= n <= MAX_SAMPLE:
        out.append(f"{_M}{at}.sample.n is not an integer from 0 to {MAX_SAMPLE}")
    for key in ("first_checkpoint", "last_checkpoint"):
        out += _checkpoint_problems(f"{at}.{key}", c.get(key))
    last = c.get("last_checkpoint")
    size = last.get("size") if isinstance(last, dict) else None
    if _is_int(hi) and _is_int(size) and hi > size:
        out.append(f"{_M}{at}.hi {hi} is beyond its last checkpoint's size {size}")
    return out


def _checkpoint_problems(at: str, cp: object) -> list[str]:
    if cp is None:
        return []
    if not isinstance(cp, dict):
        return [f"{_M}{at} is neither null nor an object"]
    out = []
    if not _is_int(cp.get("size")) or cp["size"] < 0:
        out.append(f"{_M}{at}.size is not an integer >= 0")
    if not _is_hex64(cp.get("root")):
        out.append(f"{_M}{at}.root is not 64 lowercase hex digits")
    file = cp.get("file")
    if not isinstance(file, str) or not file.startswith("checkpoints/"):
        out.append(f"{_M}{at}.file is not a name under checkpoints/")
    return out


def in_full_problems(
    name: str, seen: Sequence[tuple[str, int]], ranges: Mapping[str, tuple[int, int]]
) -> list[str]:
    """``seen``: the (chain, seq) of each line of in-full file ``name``, in file order;
    ``ranges``: each chain's stated ``[lo, hi)``, in the manifest's order. The pack writes
    each record once, chain by chain in that order and by seq within a chain, each inside
    its chain's range: anything else was edited."""
    out: list[str] = []
    order = {chain: i for i, chain in enumerate(ranges)}
    last: dict[str, int] = {}
    at = 0  # the manifest position of the previous line's chain
    for i, (chain, seq) in enumerate(seen):
        lo, hi = ranges.get(chain, (0, 0))
        if not lo <= seq < hi:
            out.append(
                f"{name} line {i}: chain {chain!r} seq {seq} is outside the period's range "
                f"[{lo}, {hi})"
            )
        if chain in last and seq <= last[chain]:
            what = "repeats" if seq == last[chain] else f"comes after seq {last[chain]}"
            out.append(f"{name} line {i}: chain {chain!r} seq {seq} {what}")
        elif order.get(chain, at) < at:
            out.append(f"{name} line {i}: chain {chain!r} after a later chain of the manifest")
        last[chain] = max(seq, last.get(chain, seq))
        at = max(at, order.get(chain, at))
    return out


def left_out(
    name: str, held: set[tuple[str, int]], sampled: Iterable[tuple[str, int]]
) -> list[str]:
    """The sampled records of the in-full file's category that the file does not hold."""
    missing = sorted(set(sampled) - held)
    return [
        f"{name} leaves out chain {chain!r} seq {seq}, which the sample holds"
        for chain, seq in missing[:20]
    ]


#: What decides the bytes of report.html, and besides of report.pdf (report.json ``versions``).
HTML_ENVIRONMENT = ("workflow-audit", "jinja2", "template")
PDF_ENVIRONMENT = (*HTML_ENVIRONMENT, "weasyprint", "pango", "fonts")


def environment_differs(stated: object, here: Mapping[str, str], keys: Sequence[str]) -> str:
    """Which of ``keys`` the report's ``versions`` (``stated``) give otherwise than ``here``.

    >>> environment_differs({"jinja2": "3.1"}, {"jinja2": "3.2", "pango": "1"}, ["jinja2", "pango"])
    'jinja2 3.1 (here 3.2), pango not stated (here 1)'
    """
    got = stated if isinstance(stated, dict) else {}
    return ", ".join(
        f"{k} {str(got.get(k, 'not stated'))[:40]} (here {here.get(k, 'unknown')})"
        for k in keys
        if got.get(k) != here.get(k)
    )


#: The longest string an honest report.json holds (a finding quotes an error message).
MAX_REPORT_STRING = 64 << 10


def report_size_problems(report: object) -> list[str]:
    """The lists of ``report.json`` longer than an honest pack writes (:data:`REPORT_CAPS`)
    and any string over 64 KiB: checked before anything renders it, since rendering costs
    time and memory with their length (a 15 MB forged report took minutes and GBs)."""
    out: list[str] = []
    for path, cap in REPORT_CAPS:
        for where, value in _at(report, path):
            if isinstance(value, list | dict) and len(value) > cap:
                out.append(f"report.json: {where} holds {len(value)} items, more than {cap}")
    stack: list[object] = [report]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, str) and len(value) > MAX_REPORT_STRING:
            out.append(
                f"report.json: a string of {len(value)} characters, more than a report holds"
            )
            break
    return out


def _at(value: object, path: tuple[str, ...], where: str = "") -> Iterator[tuple[str, Any]]:
    if not path:
        yield where, value
    elif path[0] == "*" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _at(item, path[1:], f"{where}[{i}]")
    elif isinstance(value, dict) and path[0] in value:
        yield from _at(value[path[0]], path[1:], f"{where}.{path[0]}" if where else path[0])


def report_problems(
    report: Mapping[str, Any],
    manifest: Mapping[str, Any],
    counts: Mapping[str, int],
    *,
    samples: Mapping[str, tuple[int, int]] | None = None,
    held: Mapping[str, set[tuple[str, int]]] | None = None,
) -> list[str]:
    """``report.json`` against the signed manifest, the in-full files' line ``counts``
    (category → lines; a category left out was not counted), each sample file's (lines,
    distinct seqs) by chain and each counted in-full file's (chain, seq). Raises
    KeyError/TypeError on a report that is not the shape at all (the caller names it)."""
    out = _statement_problems(report, manifest, samples or {}, held or {})
    mp, rp = manifest["period"], report["period"]
    if (rp["since"], rp["until"]) != (mp["since"], mp["until"]):
        out.append(
            f"report.json: period {rp['since']} to {rp['until']}, the manifest's is "
            f"{mp['since']} to {mp['until']}"
        )
    stated = {c["chain"]: c for c in report["chains"]}
    if sorted(stated) != sorted(c["chain"] for c in manifest["chains"]):
        out.append("report.json: its chains are not the manifest's")
    for c in manifest["chains"]:
        r = stated.get(c["chain"])
        if r is not None and _chain_view(r) != _chain_view(c):
            out.append(
                f"report.json: chain {c['chain']!r} differs from the manifest's (range, "
                "records or checkpoints)"
            )
    for c in report["chains"]:
        last = c["last_checkpoint"]
        if last is not None and (c["size"], c["root"]) != (last["size"], last["root"]):
            out.append(f"report.json: chain {c['chain']!r} states another size or root")
    fails = [f"{x['check']}: {x['detail']}" for x in report["transcript"] if x["result"] == "FAIL"]
    if report["findings"] != fails:
        out.append("report.json: its findings are not its transcript's FAIL lines")
    failed = bool(report["findings"]) or bool(fails)
    verdict = report["verdict"]
    if verdict != manifest["verdict"] or verdict != ("FAIL" if failed else "PASS"):
        out.append(
            f"report.json: verdict {verdict!r}, the manifest's {manifest['verdict']!r}; its "
            f"findings and transcript make it {'FAIL' if failed else 'PASS'}"
        )
    if sorted(x["category"] for x in report["in_full"]) != sorted(IN_FULL):
        out.append(f"report.json: in_full does not list each of {', '.join(IN_FULL)} once")
    for item in report["in_full"]:
        category = item["category"]
        if category in counts and item["count"] != counts[category]:
            out.append(
                f"report.json: {item['count']} {category} records in full, "
                f"{item['file']} holds {counts[category]}"
            )
    return out


def _statement_problems(
    report: Mapping[str, Any],
    manifest: Mapping[str, Any],
    samples: Mapping[str, tuple[int, int]],
    held: Mapping[str, set[tuple[str, int]]],
) -> list[str]:
    """What report.json states besides the manifest's figures: the controls' statuses and
    records, and each chain's sample (the HTML/PDF show these as the pack's findings)."""
    out: list[str] = []
    controls = report["controls"]
    if report["not_evidenced"] != [c["id"] for c in controls if c["status"] == "not evidenced"]:
        out.append("report.json: not_evidenced is not the controls whose status is so")
    for c in controls:
        if not _is_int(c["count"]) or c["count"] < len(c["records"]):
            out.append(f"report.json: control {str(c['id'])[:80]!r} counts fewer than it lists")
        for r in c["records"]:
            category = in_full_category(str(r["event"]))
            if (
                category is not None
                and category in held
                and (r["chain"], r["seq"]) not in held[category]
            ):
                out.append(
                    f"report.json: control {str(c['id'])[:80]!r} lists chain "
                    f"{str(r['chain'])[:80]!r} seq {r['seq']}, which records/{category}.jsonl "
                    "does not hold"
                )
    n = {c["chain"]: c["sample"]["n"] for c in manifest["chains"]}
    for c in report["chains"]:
        s, chain = c["sample"], c["chain"]
        want = (n.get(chain), *samples.get(chain, (s["count"], s["distinct"])))
        if (s["requested"], s["count"], s["distinct"]) != want:
            out.append(
                f"report.json: chain {str(chain)[:80]!r} states sample {s['requested']} "
                f"requested, {s['count']} proven, {s['distinct']} distinct; the pack's is "
                f"{want[0]}, {want[1]}, {want[2]}"
            )
    return out[:50]


def _chain_view(c: Mapping[str, Any]) -> tuple[Any, ...]:
    def cp(x: Any) -> tuple[Any, Any] | None:
        return None if x is None else (x["size"], x["root"])

    return (
        c["lo"],
        c["hi"],
        c["records"],
        cp(c["first_checkpoint"]),
        cp(c["last_checkpoint"]),
    )


def bounds_expected(lo: int, hi: int, size: int) -> list[tuple[str, int]]:
    """The (side, seq) lines of a bounds file for range ``[lo, hi)`` of a tree of ``size``."""
    out = [("before", lo - 1)] if lo > 0 else []
    if hi > lo:
        out += [("first", lo), ("last", hi - 1)]
    if hi < size:
        out.append(("after", hi))
    return out


def bounds_problems(
    name: str,
    lines: Sequence[tuple[str, int, str | None]],
    lo: int,
    hi: int,
    size: int,
    period: tuple[str, str],
) -> list[str]:
    """``lines``: each (side, seq, ts) of ``proofs/CHAIN.bounds.jsonl``, proven included.
    The record before ``lo`` and the one at ``hi`` must be outside the period, the first and
    last of the range inside it: else the stated range was cut short or padded."""
    got = [(side, seq) for side, seq, _ in lines]
    want = bounds_expected(lo, hi, size)
    if got != want:
        return [f"{name}: holds {got[:6]}, the range [{lo}, {hi}) of {size} records needs {want}"]
    since, until = period
    out = []
    for side, seq, ts in lines:
        inside = ts is not None and since <= ts < until
        if side in ("before", "after") and inside:
            what = "starts too late" if side == "before" else "ends too early"
            out.append(f"{name}: seq {seq} ({side}) is in the period: the pack's range {what}")
        elif side in ("first", "last") and not inside:
            what = "starts too early" if side == "first" else "ends too late"
            out.append(
                f"{name}: seq {seq} ({side}) is outside the period (ts {ts}): the pack's "
                f"range {what}"
            )
    return out


def proven(line: Mapping[str, Any], chain: str, root: Checkpoint) -> dict[str, Any]:
    """Check one proof line (``{chain, leaf_index, tree_size, record, audit_path}``) against
    ``root`` (RFC 9162 §2.1.3 inclusion, RFC 8785 canonical record on ``chain``); return the
    record's value. Raises :class:`ProofError`, or KeyError/TypeError/ValueError on a line
    of the wrong shape."""
    body = str(line["record"]).encode("utf-8")
    value = orjson.loads(body)
    if not isinstance(value, dict) or canonical_bytes(value) != body:
        raise ProofError("the record is not RFC 8785 canonical JSON")
    seq, size = line["leaf_index"], line["tree_size"]
    if value.get("chain") != chain or value.get("seq") != seq or size != root.size:
        raise ProofError(f"the record is chain {value.get('chain')!r} seq {value.get('seq')}")
    hashes = [bytes.fromhex(h) for h in line["audit_path"]]
    verify_inclusion(leaf_hash(body), seq, size, hashes, root.root)
    return value


def in_period(value: Mapping[str, Any], period: tuple[str, str]) -> bool:
    ts = value.get("ts")
    return isinstance(ts, str) and period[0] <= ts < period[1]


def sample_stream(root: bytes, lo: int, hi: int, n: int) -> Iterator[int]:
    """:func:`~audit_core.evidence.sample.sample_indices`, one index at a time: a checker
    compares each with its line and stops at the first difference, never building a list of
    a stated (hostile) ``n``."""
    if hi <= lo or n <= 0:
        return
    span = hi - lo
    if span <= n:
        yield from range(lo, hi)
        return
    for i in range(n):
        digest = hashlib.sha256(SAMPLE_DOMAIN + root + i.to_bytes(8, "big")).digest()
        yield lo + int.from_bytes(digest, "big") % span
