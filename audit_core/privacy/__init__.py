"""Personal data kept off the chain: keyed commitments on it, erasable openings beside it.

The pieces (docs/PRIVACY.md): ``commitment`` (the commitment and sealing primitives),
``pointer`` (RFC 6901), ``policy`` (which fields, whose), ``keys`` and ``store`` (per-subject
keys; openings), ``apply`` (the policy applied to a record), ``erase`` (erase, open, verify).

This module holds only what a trail needs without a policy: model values are left out.

>>> strip_model_values("model.invoked", {"inputs": {"sha256": "ab", "value": [1]},
...                                      "data_subject": "customer-42"})
{'inputs': {'sha256': 'ab'}}
"""

from __future__ import annotations

from typing import Final

from audit_core._normalize import JSONObject

__all__ = ["MODEL_EVENT", "MODEL_VALUES", "PRIVACY_CHAIN", "strip_model_values"]

#: Where ``privacy.policy`` and ``privacy.erased`` go: the audit-of-the-audit chain
#: (``audit_core.readlog.AUDIT_CHAIN``; the writing layer may not import that service).
PRIVACY_CHAIN: Final = "audit"
MODEL_EVENT: Final = "model.invoked"
#: A model's input and output values: on a chain only as a policy shapes them (committed,
#: sealed, redacted or kept on purpose); without a policy they are left out of the record.
MODEL_VALUES: Final = (("inputs", "value"), ("outputs", "value"))


def strip_model_values(event: str, data: JSONObject) -> JSONObject:
    """``data`` without the model values and whose they are (no policy is on: digests,
    sizes, rows and schema stay; ``data_subject`` names a person and only a policy may
    record it, as a commitment)."""
    if event != MODEL_EVENT:
        return data
    out = {k: v for k, v in data.items() if k != "data_subject"}
    for side, name in MODEL_VALUES:
        part = out.get(side)
        if isinstance(part, dict) and name in part:
            out[side] = {k: v for k, v in part.items() if k != name}
    return out
