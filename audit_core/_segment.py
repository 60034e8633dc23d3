"""The S3 segment format: object names, segment bytes and Object Lock constants, shared by
the writer (:mod:`audit_core.sinks.s3`) and the verifier (:mod:`audit_core.bucket`).

>>> key = segment_key("audit/prod", "airflow", 0, 999)
>>> key
'audit/prod/airflow/00000000000000000000-00000000000000000999.jsonl.gz'
>>> parse_key("audit/prod", key)
('airflow', 0, 999, 'segment')
>>> decode_segment(encode_segment([b'{"seq":0}', b'{"seq":1}']))
[b'{"seq":0}', b'{"seq":1}']

Layout of a bucket (``s3://BUCKET/PREFIX``), one pair of objects per segment:

- ``PREFIX/CHAIN/FIRST-LAST.jsonl.gz`` (FIRST and LAST: seqs, 20 digits, so names sort by
  position): records FIRST..LAST of the chain, each its canonical RFC 8785 bytes followed by
  ``\\n`` (canonical JSON escapes every control character, so a record never holds a raw
  newline), compressed as exactly one RFC 1952 gzip member (mtime 0, no file name). The
  record hashes are not stored: a verifier recomputes them from the bytes.
- ``PREFIX/CHAIN/FIRST-LAST.checkpoint``: the chain's C2SP tlog-checkpoint at tree size
  LAST + 1 as a C2SP signed-note: the RFC 9162 root of every record up to the segment's end.
  Written after its segment: a segment without one is an upload cut short.

- ``PREFIX/CHAIN/cosigned/SIZE-DIGEST.checkpoint`` (SIZE: 20 digits; DIGEST: the first 16 hex
  digits of the SHA-256 of the object's bytes): a checkpoint of the chain at tree size SIZE,
  signed by the log, with the witnesses' c2sp.org/tlog-cosignature lines appended. One
  object per state: a later cosignature makes a new object (a new digest), never a new
  version. Written only after the segments up to SIZE.

CHAIN is percent-encoded (RFC 3986), so a ``/`` in a chain id never makes a sub-directory.
Names derive from chain and range only, so a re-upload is a no-op. Every object carries
``x-amz-checksum-sha256`` (:func:`sha256_b64`) and S3 Object Lock retention in one of
:data:`LOCK_MODES`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import zlib
from collections.abc import Sequence
from urllib.parse import quote, unquote

__all__ = [
    "LOCK_MODES",
    "MIN_RETENTION_DAYS",
    "chain_dir",
    "checkpoint_key",
    "cosigned_dir",
    "cosigned_key",
    "decode_segment",
    "encode_segment",
    "parse_cosigned_key",
    "parse_key",
    "segment_key",
    "sha256_b64",
]

#: EU AI Act Art. 19(1): logs of high-risk AI systems are kept "for a period appropriate to
#: the intended purpose …, of at least six months". Six calendar months are at most 184
#: days (July-December), so 184 days is six months whenever the clock starts.
MIN_RETENTION_DAYS = 184
#: S3 Object Lock retention modes (PutObject ``x-amz-object-lock-mode``).
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")

_NAME = re.compile(r"(\d{20})-(\d{20})\.(jsonl\.gz|checkpoint)")
_SUFFIX = {"jsonl.gz": "segment", "checkpoint": "checkpoint"}
_COSIGNED = re.compile(r"cosigned/(\d{20})-([0-9a-f]{16})\.checkpoint")
_COMPRESSLEVEL = 6  # zlib's default: ~3 µs a record; level 9 halves the speed for 0.5 % less


def chain_dir(prefix: str, chain: str) -> str:
    """``PREFIX/CHAIN/``: where a chain's objects live (the chain percent-encoded)."""
    enc = quote(chain, safe="")
    return f"{prefix.strip('/')}/{enc}/" if prefix.strip("/") else f"{enc}/"


def segment_key(prefix: str, chain: str, first: int, last: int) -> str:
    """The object name of the segment holding records ``first..last`` of ``chain``."""
    return f"{chain_dir(prefix, chain)}{first:020d}-{last:020d}.jsonl.gz"


def checkpoint_key(prefix: str, chain: str, first: int, last: int) -> str:
    """The object name of the checkpoint at the end of segment ``first..last``."""
    return f"{chain_dir(prefix, chain)}{first:020d}-{last:020d}.checkpoint"


def cosigned_dir(prefix: str, chain: str) -> str:
    """``PREFIX/CHAIN/cosigned/``: where a chain's cosigned checkpoints live."""
    return f"{chain_dir(prefix, chain)}cosigned/"


def cosigned_key(prefix: str, chain: str, size: int, data: bytes) -> str:
    """The object name of cosigned checkpoint ``data`` (a signed note) at tree size ``size``:
    content-addressed, so the same note is one object and a new cosignature a new one.

    >>> cosigned_key("p", "c", 7, b"x")[:48]
    'p/c/cosigned/00000000000000000007-2d711642b726b0'
    """
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{cosigned_dir(prefix, chain)}{size:020d}-{digest}.checkpoint"


def parse_cosigned_key(prefix: str, key: str) -> tuple[str, int, str] | None:
    """``(chain, size, digest)`` of a cosigned checkpoint's object name, or None."""
    base = prefix.strip("/")
    if base and not key.startswith(base + "/"):
        return None
    rel = key[len(base) + 1 :] if base else key
    enc, sep, name = rel.partition("/")
    found = _COSIGNED.fullmatch(name)
    if not sep or found is None:
        return None
    chain = unquote(enc)
    if quote(chain, safe="") != enc:
        return None
    return chain, int(found[1]), found[2]


def parse_key(prefix: str, key: str) -> tuple[str, int, int, str] | None:
    """``(chain, first, last, "segment" | "checkpoint")`` of one of our object names, or None
    for anything else (a foreign object, or a chain not in its canonical encoding)."""
    base = prefix.strip("/")
    rel = key[len(base) + 1 :] if base else key
    if base and not key.startswith(base + "/"):
        return None
    enc, sep, name = rel.partition("/")
    found = _NAME.fullmatch(name)
    if not sep or found is None:
        return None
    chain = unquote(enc)
    if quote(chain, safe="") != enc:
        return None
    return chain, int(found[1]), int(found[2]), _SUFFIX[found[3]]


def encode_segment(bodies: Sequence[bytes]) -> bytes:
    """One gzip member (RFC 1952) of the records' bytes, a ``\\n`` after each; mtime 0 and
    no file name, so the same records give the same object with the same zlib."""
    return gzip.compress(b"\n".join(bodies) + b"\n", compresslevel=_COMPRESSLEVEL, mtime=0)


def decode_segment(data: bytes) -> list[bytes]:
    """The record bytes in a segment; ValueError unless ``data`` is exactly one complete gzip
    member of newline-terminated lines.

    RFC 1952 §2.2 lets a gzip file hold several members, and Python's ``gzip`` module reads
    them all (and skips trailing zeros): bytes appended after our one member would pass
    unseen, as they did for years in the CloudTrail log file validator. So zlib is driven
    directly (``wbits=31``: gzip framing, CRC-32 and ISIZE checked) and anything left after
    the member is an error.
    """
    # RFC 1952 §2.3.1: ID1 ID2 CM=8 (deflate), FLG=0: no extra field, file name or comment
    # (the sink writes none, so nothing can hide in the header).
    if data[:4] != b"\x1f\x8b\x08\x00":
        raise ValueError("not a gzip member as the sink writes it (magic, deflate, no flags)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise ValueError(f"not a valid gzip member: {exc}") from exc
    if not inflater.eof:
        raise ValueError("the gzip member is truncated (no end of stream, CRC-32 or length)")
    if inflater.unused_data:
        extra = len(inflater.unused_data)
        raise ValueError(
            f"{extra} byte(s) after the end of the gzip member (a segment is exactly one "
            "member: bytes were appended, or a second member was concatenated)"
        )
    if not out.endswith(b"\n"):
        raise ValueError("the records do not end with a newline (truncated or altered)")
    return out[:-1].split(b"\n")


def sha256_b64(data: bytes) -> str:
    """The value of ``x-amz-checksum-sha256``: base64 of the SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()
