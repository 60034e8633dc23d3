"""RFC 6901 JSON pointers over a record's view ``{"actor": …, "subject": …, "data": …}``.

>>> doc = {"data": {"conf": {"a/b": [1, 2]}}}
>>> p = join("/data/conf", "a/b", "1")
>>> p, resolve(doc, p), split(p)
('/data/conf/a~1b/1', 2, ['data', 'conf', 'a/b', '1'])
>>> replace(doc, "/data/conf/a~1b/0", "x")["data"]["conf"]["a/b"], doc["data"]["conf"]["a/b"]
(['x', 2], [1, 2])
"""

from __future__ import annotations

import functools
from typing import Final

from audit_core._normalize import JSON
from audit_core.errors import PrivacyError

__all__ = [
    "MISSING",
    "escape_token",
    "get",
    "join",
    "replace",
    "resolve",
    "split",
    "unescape_token",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`resolve` returns for a pointer that names nothing in the document.
MISSING: Final = _Missing()


def escape_token(token: str) -> str:
    """RFC 6901 §3: ``~`` → ``~0``, ``/`` → ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape_token(token: str) -> str:
    """RFC 6901 §4: ``~1`` → ``/`` first, then ``~0`` → ``~``."""
    return token.replace("~1", "/").replace("~0", "~")


def join(base: str, *tokens: str) -> str:
    """``base`` extended by ``tokens`` (unescaped member names or array indices)."""
    return base + "".join("/" + escape_token(t) for t in tokens)


def split(pointer: str) -> list[str]:
    """The unescaped reference tokens of ``pointer`` ("" is the whole document: [])."""
    return list(_tokens(pointer))


@functools.lru_cache(maxsize=4096)
def _tokens(pointer: str) -> tuple[str, ...]:
    # Cached: a policy decides the same few pointers record after record.
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise PrivacyError(f"a JSON pointer starts with '/': {pointer!r}")
    return tuple(unescape_token(t) for t in pointer[1:].split("/"))


def resolve(doc: JSON, pointer: str) -> JSON | _Missing:
    """The value ``pointer`` names in ``doc``, or :data:`MISSING`."""
    node: JSON = doc
    for token in _tokens(pointer):
        if isinstance(node, dict):
            if token not in node:
                return MISSING
            node = node[token]
        elif isinstance(node, list):
            index = _index(token, len(node))
            if index is None:
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def get(doc: JSON, pointer: str) -> JSON:
    """The value ``pointer`` names in ``doc``; :class:`PrivacyError` when it names nothing."""
    found = resolve(doc, pointer)
    if isinstance(found, _Missing):
        raise PrivacyError(f"no value at {pointer!r}")
    return found


def _index(token: str, size: int) -> int | None:
    # RFC 6901 §4: array-index = %x30 / ( %x31-39 *%x30-39 ), ASCII digits only ("01", Arabic-Indic,
    # "²" and "-" name nothing here).
    if not (token.isascii() and token.isdigit()) or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    return index if index < size else None


def replace(doc: JSON, pointer: str, value: JSON) -> JSON:
    """A copy of ``doc`` with the node at ``pointer`` replaced (copy on write: only the
    containers on the path are copied); :class:`PrivacyError` if ``pointer`` names nothing."""
    return _replace(doc, _tokens(pointer), 0, value, pointer)


def _replace(doc: JSON, tokens: tuple[str, ...], i: int, value: JSON, pointer: str) -> JSON:
    if i == len(tokens):
        return value
    head = tokens[i]
    if isinstance(doc, dict) and head in doc:
        return {**doc, head: _replace(doc[head], tokens, i + 1, value, pointer)}
    index = _index(head, len(doc)) if isinstance(doc, list) else None
    if isinstance(doc, list) and index is not None:
        inner = _replace(doc[index], tokens, i + 1, value, pointer)
        return [*doc[:index], inner, *doc[index + 1 :]]
    raise PrivacyError(f"no value at {pointer!r} to replace")
