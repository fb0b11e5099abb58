"""Re-score events from a Redis Stream: producers ``XADD``, the re-score reads them with a consumer group.

A producer (an application, a queue bridge) appends one entry per event::

    XADD churn:events * customer_id C00000042 kind complaint [at 2026-11-21T09:14:58Z]

``CHURN_RESCORE_STREAM`` names the stream (on the serving Redis). The ``churn_rescore`` run reads entries
with the consumer group ``churn-rescore`` (consumer = the run id) and acknowledges them only after both
stores hold the new scores (:func:`acknowledge`); then what every consumer has acknowledged is trimmed.

- A retry of a run (same consumer) reads its own unacknowledged entries first; entries of a consumer that
  died stay pending and are re-claimed (``XAUTOCLAIM``) by the next run once idle for the claim lease.
- A malformed entry (no or an unusable customer id, a bad ``at``) goes to ``<stream>:dead`` with the
  reason and the original fields, and is acknowledged: it never blocks the stream.
- An entry delivered more than ``CHURN_RESCORE_MAX_ATTEMPTS`` times goes to the dead letters too.
- The re-score's writes are idempotent, so an entry processed twice (its consumer died after writing the
  stores, before ``XACK``) has the effect of once: exactly-once effect, as the outbox.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)

GROUP = "churn-rescore"
DEAD_SUFFIX = ":dead"
DEAD_MAXLEN = 100_000  # dead letters kept (approximately): the newest, for an operator to inspect
_ID_OK = re.compile(r"^[^\x00-\x1f\"\\]{1,200}$")


class StreamError(RuntimeError):
    """The event stream cannot be read or acknowledged; the entries stay pending for the next run."""


@dataclass(frozen=True)
class StreamEntry:
    """One stream entry, parsed: ``reason`` says why it is malformed (None: it can be re-scored)."""

    entry_id: str
    customer_id: str | None
    kind: str
    event_at: str
    deliveries: int
    fields: dict[str, str]
    reason: str | None = None


def dead_stream(stream: str) -> str:
    """The dead-letter stream of ``stream``."""
    return stream + DEAD_SUFFIX


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_entry(entry_id, fields: dict, deliveries: int = 1) -> StreamEntry:
    """An entry's customer, kind and time, or the reason it cannot be re-scored."""
    fields = {_text(k): _text(v) for k, v in (fields or {}).items()}
    customer = fields.get("customer_id")
    kind = (fields.get("kind") or "stream")[:100]
    at = fields.get("at")
    event_at = datetime.now(timezone.utc).isoformat()
    reason = None
    if not customer or not customer.strip():
        reason = "no customer_id field (XADD <stream> * customer_id <id> [kind <kind>] [at <ISO time>])"
    elif not _ID_OK.match(customer):
        reason = "customer_id is longer than 200 characters or holds quotes, backslashes or control characters"
    if at and reason is None:
        try:
            parsed = datetime.fromisoformat(at.replace("Z", "+00:00"))
            event_at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).isoformat()
        except ValueError:
            reason = f"at={at[:60]!r} is not an ISO 8601 time"
    return StreamEntry(_text(entry_id), customer if reason is None else None, kind, event_at, deliveries, fields,
                       reason)


def ensure_group(client, stream: str) -> None:
    """Create the consumer group (and the stream) if missing; a group that exists is left as it is."""
    import redis

    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_batch(client, stream: str, consumer: str, count: int, lease_seconds: float) -> list[StreamEntry]:
    """Up to ``count`` entries for ``consumer``: its own unacknowledged ones, then abandoned ones, then new ones."""
    ensure_group(client, stream)
    entries: list[tuple] = []
    own = client.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)  # a retry: what it read before
    own = own[0][1] if own else []
    gone = [e[0] for e in own if not e[1]]  # deleted from the stream since: nothing left to re-score
    if gone:
        client.xack(stream, GROUP, *gone)
    entries += [e for e in own if e[1]]
    if len(entries) < count:
        claimed = client.xautoclaim(stream, GROUP, consumer, min_idle_time=int(lease_seconds * 1000),
                                    start_id="0-0", count=count - len(entries))
        entries += [e for e in claimed[1] if e[1]]
    if len(entries) < count:
        new = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count - len(entries))
        entries += new[0][1] if new else []
    if not entries:
        return []
    ids = [e[0] for e in entries]
    deliveries = {}
    for item in client.xpending_range(stream, GROUP, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
                                      count=len(ids) * 4, consumername=consumer):
        deliveries[_text(item["message_id"])] = int(item["times_delivered"])
    return [parse_entry(entry_id, fields, deliveries.get(_text(entry_id), 1)) for entry_id, fields in entries]


def _id_key(entry_id) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def dead_letter(client, stream: str, entries: list[StreamEntry], reasons: dict[str, str] | None = None) -> int:
    """Copy ``entries`` to the dead-letter stream with their reason, then acknowledge them (one transaction)."""
    if not entries:
        return 0
    pipe = client.pipeline(transaction=True)
    for entry in entries:
        reason = (reasons or {}).get(entry.entry_id) or entry.reason or "unknown"
        pipe.xadd(dead_stream(stream), {**{f"field:{k}": v for k, v in entry.fields.items()},
                                        "entry_id": entry.entry_id, "reason": reason,
                                        "dead_at": datetime.now(timezone.utc).isoformat()},
                  maxlen=DEAD_MAXLEN, approximate=True)
    pipe.xack(stream, GROUP, *[e.entry_id for e in entries])
    pipe.execute()
    log.warning("%s event(s) of %s sent to %s: %s", len(entries), stream, dead_stream(stream),
                sorted({(reasons or {}).get(e.entry_id) or e.reason for e in entries})[:5])
    return len(entries)


def acknowledge(client, stream: str, entry_ids: list[str]) -> int:
    """``XACK`` the entries whose scores both stores now hold, then trim what every reader has acknowledged."""
    if not entry_ids:
        return 0
    acked = int(client.xack(stream, GROUP, *entry_ids))
    trim(client, stream)
    return acked


def trim(client, stream: str) -> int:
    """Remove the entries older than the group's oldest unacknowledged one (or than all it has delivered)."""
    groups = {_text(g["name"]): g for g in client.xinfo_groups(stream)}
    group = groups.get(GROUP)
    if group is None:
        return 0
    summary = client.xpending(stream, GROUP)
    if summary and summary.get("pending"):
        floor = _text(summary["min"])
    else:
        floor = _text(group["last-delivered-id"])
        ms, seq = _id_key(floor)
        floor = f"{ms}-{seq + 1}"  # everything up to the last delivered entry is acknowledged
    if len(groups) > 1:  # other groups read this stream too: keep what they may not have read
        return 0
    return int(client.execute_command("XTRIM", stream, "MINID", floor))


def backlog(client, stream: str) -> tuple[int, int, str | None]:
    """(entries not yet delivered to the group, delivered but unacknowledged, the newest entry id)."""
    import redis

    try:
        info = client.xinfo_stream(stream)
    except redis.exceptions.ResponseError:  # no such stream yet
        return 0, 0, None
    last = _text(info.get("last-generated-id") or "") or None
    group = next((g for g in client.xinfo_groups(stream) if _text(g["name"]) == GROUP), None)
    if group is None:
        return int(info.get("length") or 0), 0, last
    lag = group.get("lag")
    if lag is None:  # unknown after deletions: compare ids instead
        lag = 1 if last and _id_key(last) > _id_key(group["last-delivered-id"]) else 0
    return int(lag), int(group.get("pending") or 0), last
