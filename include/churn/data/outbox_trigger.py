"""The triggerer's watch on the re-score outbox: an Airflow event trigger behind the ``churn_rescore`` asset.

Polling, not LISTEN/NOTIFY: one cheap index-only query (``count``/``max`` over the pending part of the
outbox) every ``poll_seconds``. It needs no long-lived session the database could drop, survives a
database restart, and sees events written while the triggerer was down. The trigger fires when the
highest pending event id moved since it last fired (new events), and again every ``refire_seconds``
while events stay pending (a run that failed, a claim that expired), so nothing waits forever. For a
file source it also lists ``delta_dir``: delta files dropped there count as pending events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)


class OutboxTrigger(BaseEventTrigger):
    """Fire a ``{"pending", "max_event_id"}`` event when new re-score events wait in ``churn.rescore_outbox``."""

    def __init__(self, conn_id: str = "churn_postgres", url_env: str = "CHURN_POSTGRES_URL", poll_seconds: float = 2.0,
                 refire_seconds: float = 60.0, delta_dir: str = "") -> None:
        super().__init__()
        self.conn_id = conn_id
        self.url_env = url_env
        self.poll_seconds = poll_seconds
        self.refire_seconds = refire_seconds
        self.delta_dir = delta_dir  # a file source's drop folder: new delta files count as pending events

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and arguments (the triggerer re-creates the trigger from them)."""
        return ("churn.data.outbox_trigger.OutboxTrigger", {
            "conn_id": self.conn_id, "url_env": self.url_env, "poll_seconds": self.poll_seconds,
            "refire_seconds": self.refire_seconds, "delta_dir": self.delta_dir})

    async def _connect_args(self) -> dict[str, Any]:
        """Where the outbox is: the URL variable, else the Airflow connection, else the embedded servers."""
        url = os.environ.get(self.url_env)
        if url:
            return {"dsn": url}
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from churn.connections import postgres_url, psycopg2_kwargs

        try:
            return psycopg2_kwargs(await BaseHook.aget_connection(self.conn_id))
        except AirflowNotFoundException:
            return {"dsn": postgres_url()}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the outbox forever; yield an event for new pending entries (and periodically for old ones)."""
        import psycopg2

        from churn.data.outbox import delta_files, pending

        args = await self._connect_args()

        def poll() -> tuple[int, int | None]:
            conn = psycopg2.connect(connect_timeout=10, **args)
            try:
                count, highest = pending(conn)
            finally:
                conn.close()
            if self.delta_dir:
                files = delta_files(self.delta_dir)
                if files:  # not yet in the outbox: the run records them first; the newest file marks them new
                    return count + len(files), (highest or 0) + int(max(p.stat().st_mtime for p in files))
            return count, highest

        fired_max: int | None = None
        fired_at = 0.0
        while True:
            try:
                count, highest = await asyncio.to_thread(poll)
            except psycopg2.Error as exc:  # the database is away: keep watching, say why
                self.log.warning("outbox poll failed (%s); retrying in %s s", str(exc).strip(), self.poll_seconds)
                count, highest = 0, None
            now = time.monotonic()
            if count and (highest != fired_max or now - fired_at >= self.refire_seconds):
                fired_max, fired_at = highest, now
                yield TriggerEvent({"pending": count, "max_event_id": highest})
            await asyncio.sleep(self.poll_seconds)


class StreamTrigger(BaseEventTrigger):
    """Fire a ``{"stream", "waiting", "pending"}`` event when new entries wait in the re-score Redis Stream.

    Polls ``XINFO`` (no entry is read or claimed here): fires when the stream's newest entry is one the
    consumer group has not been given yet, and again every ``refire_seconds`` while entries stay pending
    (a run that died holding them: the next run re-claims them).
    """

    def __init__(self, stream: str, conn_id: str = "churn_redis", url_env: str = "CHURN_REDIS_URL",
                 poll_seconds: float = 2.0, refire_seconds: float = 60.0) -> None:
        super().__init__()
        self.stream = stream
        self.conn_id = conn_id
        self.url_env = url_env
        self.poll_seconds = poll_seconds
        self.refire_seconds = refire_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and arguments (the triggerer re-creates the trigger from them)."""
        return ("churn.data.outbox_trigger.StreamTrigger", {
            "stream": self.stream, "conn_id": self.conn_id, "url_env": self.url_env,
            "poll_seconds": self.poll_seconds, "refire_seconds": self.refire_seconds})

    async def _client(self):
        """The serving Redis: the URL variable, else the Airflow connection, else the embedded server."""
        from churn.connections import redis_from_connection, redis_from_url, redis_url

        url = os.environ.get(self.url_env)
        if url:
            return redis_from_url(url, socket_timeout=10)
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return redis_from_connection(await BaseHook.aget_connection(self.conn_id))
        except AirflowNotFoundException:
            return redis_from_url(redis_url(), socket_timeout=10)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the stream forever; yield an event for new entries (and periodically for pending ones)."""
        import redis

        from churn.data.event_stream import backlog

        client = await self._client()
        fired_last: str | None = None
        fired_at = 0.0
        try:
            while True:
                try:
                    waiting, pending, last = await asyncio.to_thread(backlog, client, self.stream)
                except redis.RedisError as exc:  # Redis is away: keep watching, say why
                    self.log.warning("stream poll of %s failed (%s); retrying in %s s", self.stream, exc,
                                     self.poll_seconds)
                    waiting, pending, last = 0, 0, None
                now = time.monotonic()
                if (waiting and last != fired_last) or (
                        (waiting or pending) and now - fired_at >= self.refire_seconds):
                    fired_last, fired_at = last, now
                    yield TriggerEvent({"stream": self.stream, "waiting": waiting, "pending": pending})
                await asyncio.sleep(self.poll_seconds)
        finally:
            client.close()
