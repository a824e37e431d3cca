"""The bucket's lifecycle policy: show it, or apply ours and say exactly what the server refused.

Our rules carry IDs starting with "lipsyncd-"; rules anyone else put on the bucket are kept as they are.
Each action is its own rule, so a server that refuses one kind (SeaweedFS answers NotImplemented to
Transitions) still gets the others. PutBucketLifecycleConfiguration replaces the whole set,
so `apply` reads the current rules first and writes back the ones that are not ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import structlog

from daemon.distribute.s3 import error_code

log = structlog.get_logger(__name__)

RULE_PREFIX = "lipsyncd-"
_REFUSALS = frozenset(
    {"NotImplemented", "MalformedXML", "InvalidRequest", "InvalidArgument", "InvalidStorageClass"}
)


@dataclass(frozen=True)
class LifecyclePolicy:
    """Keep objects in standard storage, then the infrequent-access class, then delete them.
    A field set to None leaves that rule out."""

    ia_after_days: int | None = 30  # move to STANDARD_IA after this many days (S3 wants >= 30)
    expire_after_days: int | None = 60  # delete objects after this many days
    abort_multipart_after_days: int | None = 7  # abort multipart uploads left unfinished this long
    prefix: str = "lipsyncd/"  # only objects under this key prefix ("" for the whole bucket)
    ia_storage_class: str = "STANDARD_IA"

    def __post_init__(self) -> None:
        for name in ("ia_after_days", "expire_after_days", "abort_multipart_after_days"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"lifecycle: {name} must be at least 1 day (or left out); got {value}.")
        ia, expire = self.ia_after_days, self.expire_after_days
        if ia is not None and expire is not None and expire <= ia:
            raise ValueError(f"lifecycle: expire_after_days ({expire}) must come after ia_after_days ({ia}).")

    def rules(self) -> list[dict[str, Any]]:
        """Our rules in the S3 API's shape, one action per rule."""
        actions: list[tuple[str, dict[str, Any]]] = []
        if self.ia_after_days is not None:
            transition = {"Days": self.ia_after_days, "StorageClass": self.ia_storage_class}
            actions.append(("transition", {"Transitions": [transition]}))
        if self.expire_after_days is not None:
            actions.append(("expire", {"Expiration": {"Days": self.expire_after_days}}))
        if self.abort_multipart_after_days is not None:
            abort = {"DaysAfterInitiation": self.abort_multipart_after_days}
            actions.append(("abort-multipart", {"AbortIncompleteMultipartUpload": abort}))
        return [self._rule(name, action) for name, action in actions]

    def _rule(self, name: str, action: dict[str, Any]) -> dict[str, Any]:
        return {"ID": RULE_PREFIX + name, "Status": "Enabled", "Filter": {"Prefix": self.prefix}, **action}


@dataclass(frozen=True)
class ApplyReport:
    applied: tuple[str, ...]  # descriptions of our rules now on the bucket
    skipped: tuple[str, ...]  # descriptions of rules the server refused, with its answer
    kept: tuple[str, ...]  # IDs of other people's rules left in place

    def summary(self) -> str:
        lines = [f"applied: {text}" for text in self.applied]
        lines += [f"skipped: {text}" for text in self.skipped]
        lines += [f"kept (not ours): {rule_id}" for rule_id in self.kept]
        return "\n".join(lines) if lines else "nothing to apply"


def describe_rule(rule: dict[str, Any]) -> str:
    """One line in plain words, e.g. 'lipsyncd-expire: under "lipsyncd/", delete objects after 60 days'."""
    where = _rule_prefix(rule)
    scope = f'under "{where}"' if where else "whole bucket"
    parts = [f"move to {t['StorageClass']} after {t['Days']} days" for t in rule.get("Transitions", [])]
    if "Days" in rule.get("Expiration", {}):
        parts.append(f"delete objects after {rule['Expiration']['Days']} days")
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        parts.append(f"abort unfinished multipart uploads after {days} days")
    status = "" if rule.get("Status", "Enabled") == "Enabled" else f" [{rule['Status']}]"
    return f"{rule.get('ID', '(no id)')}: {scope}, {'; '.join(parts) or 'other actions'}{status}"


def _rule_prefix(rule: dict[str, Any]) -> str:
    return str(rule.get("Filter", {}).get("Prefix", rule.get("Prefix", "")))


def current_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return list(client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise


def show(client: Any, bucket: str) -> str:
    """The bucket's lifecycle rules, one line each."""
    rules = current_rules(client, bucket)
    if not rules:
        return f"Bucket {bucket} has no lifecycle rules."
    return "\n".join([f"Bucket {bucket} lifecycle rules:", *("  " + describe_rule(r) for r in rules)])


def apply(client: Any, bucket: str, policy: LifecyclePolicy) -> ApplyReport:
    """Put our rules on the bucket (keeping others' rules). If the server refuses the set, each rule is
    tried on its own; the accepted ones are applied and the refused ones listed in `skipped`."""
    others = [r for r in current_rules(client, bucket) if not str(r.get("ID", "")).startswith(RULE_PREFIX)]
    wanted = policy.rules()
    accepted: list[dict[str, Any]] = wanted
    skipped: list[str] = []
    if not wanted or _try_put(client, bucket, others + wanted) is not None:
        accepted, skipped = _sort_out(client, bucket, others, wanted)
        _put_or_delete(client, bucket, others + accepted)
    report = ApplyReport(
        tuple(describe_rule(r) for r in accepted), tuple(skipped), tuple(str(r.get("ID", "")) for r in others)
    )
    log.info("lifecycle_applied", bucket=bucket, applied=len(report.applied), skipped=len(report.skipped))
    return report


def _sort_out(
    client: Any, bucket: str, others: list[dict[str, Any]], wanted: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Try each of our rules alone: which does the server take, and what does it say to the others."""
    accepted, skipped = [], []
    for rule in wanted:
        refusal = _try_put(client, bucket, [*others, rule])
        if refusal is None:
            accepted.append(rule)
        else:
            skipped.append(f"{describe_rule(rule)} (the server answered {error_code(refusal)})")
    return accepted, skipped


def _try_put(client: Any, bucket: str, rules: list[dict[str, Any]]) -> botocore.exceptions.ClientError | None:
    try:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in _REFUSALS:
            return exc
        raise
    return None


def _put_or_delete(client: Any, bucket: str, rules: list[dict[str, Any]]) -> None:
    if rules:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    else:
        client.delete_bucket_lifecycle(Bucket=bucket)
