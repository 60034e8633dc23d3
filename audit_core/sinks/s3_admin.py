"""An S3 bucket ready for shipped segments: versioning and Object Lock, created or checked
(``workflow-audit s3 init-bucket`` prints what :func:`init_bucket` finds).

>>> state = BucketState("audit", created=False, versioning="Enabled", object_lock=False,
...                     default_retention="")
>>> [p.split(":")[0] for p in state.problems(allow_no_lock=False)]
['Object Lock is not enabled']
>>> state.problems(allow_no_lock=True)
[]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit_core.sinks.s3 import boto_errors, error_code

__all__ = ["BucketState", "init_bucket"]


@dataclass(frozen=True, slots=True)
class BucketState:
    """What ``init-bucket`` found or made."""

    bucket: str
    created: bool
    versioning: str  # "Enabled", "Suspended" or "" (never enabled)
    object_lock: bool
    default_retention: str  # "COMPLIANCE 365 days", or "" when none is set

    def problems(self, *, allow_no_lock: bool) -> list[str]:
        """What stops this bucket from holding a tamper-evident copy (empty: ready)."""
        out = []
        if self.versioning != "Enabled" and not allow_no_lock:
            out.append(
                f"versioning is {self.versioning or 'not enabled'}: enable it with `aws s3api "
                f"put-bucket-versioning --bucket {self.bucket} --versioning-configuration "
                "Status=Enabled`"
            )
        if not self.object_lock and not allow_no_lock:
            out.append(
                "Object Lock is not enabled: shipping there is refused. Enable it with `aws "
                f"s3api put-object-lock-configuration --bucket {self.bucket} "
                "--object-lock-configuration ObjectLockEnabled=Enabled` (versioning first; "
                "this cannot be undone), or create a new bucket with this command"
            )
        return out


def init_bucket(client: Any, bucket: str, *, allow_no_lock: bool = False) -> BucketState:
    """Create ``bucket`` with versioning and Object Lock (only versioning with
    ``allow_no_lock``) unless it exists, then read back what it has."""
    created = False
    try:
        client.head_bucket(Bucket=bucket)
    except boto_errors() as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        args: dict[str, Any] = {"Bucket": bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 takes no LocationConstraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if not allow_no_lock:
            # S3 User Guide, "Object Lock considerations": enabling Object Lock at creation
            # also enables versioning, and neither can be turned off afterwards.
            args["ObjectLockEnabledForBucket"] = True
        client.create_bucket(**args)
        if allow_no_lock:
            client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        created = True
    versioning = str(client.get_bucket_versioning(Bucket=bucket).get("Status", ""))
    lock, retention = False, ""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except boto_errors() as exc:
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
    else:
        lock = config.get("ObjectLockEnabled") == "Enabled"
        default = config.get("Rule", {}).get("DefaultRetention", {})
        if default:
            amount = default.get("Days") or default.get("Years")
            unit = "days" if "Days" in default else "years"
            retention = f"{default.get('Mode')} {amount} {unit}"
    return BucketState(bucket, created, versioning, lock, retention)
