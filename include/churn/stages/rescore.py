"""The event re-score stage (``churn_rescore``): drain the outbox, batch by batch, through the nightly's own code.

Per batch: claim events (exactly once across runs) -> the customers' features as of now with the
nightly's feature query, filtered to them -> the nightly's suite (bad rows to ``churn.quarantine``,
dataset ``event``) -> the verified champion -> ``churn.publish.refresh`` (Postgres, then Redis) ->
the events are marked done. A run killed anywhere loses nothing: its retry re-claims the same events
(same claimer id) and the writes are idempotent.

"As of now" means the query's ``as_of`` is tomorrow's date: every event up to this moment counts, and the
features are the ones the next nightly run computes if nothing else happens.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import NoChampionError

log = logging.getLogger(__name__)

MAX_RUN_SECONDS = 600  # a run drains for at most this long; the trigger starts the next one for the rest


def start_rescore(run_id: str, params: dict | None = None) -> dict:
    """The run reference, the same for every try of the task: a retry takes back its own claims and rows."""
    safe = "".join(ch if ch.isalnum() else "-" for ch in run_id)[-60:]
    return {"run_key": f"event-{safe}", "claimer": run_id, "params": dict(params or {})}


def rescore(cfg: ChurnConfig, res: Resources, run: dict, hook: Callable[[str], None] | None = None) -> dict:
    """Re-score the customers of pending outbox events (and the manually given ids) until the outbox is empty.

    ``hook(point)`` is called at ``claimed``, ``written_postgres`` and ``written_redis`` of every batch (the
    kill test stops the process there).
    """
    from churn.data import outbox

    started = time.monotonic()
    hook = hook or (lambda point: None)
    totals: dict[str, Any] = {"batches": 0, "events": 0, "customers": 0, "rescored": 0, "quarantined": 0,
                              "superseded": 0, "not_served": 0, "seconds": {}}
    manual = [str(i) for i in (run.get("params") or {}).get("customer_ids") or []]
    with res.source_session() as src:  # the outbox lives next to the tables it watches
        if manual:
            kind = f"manual:{run['claimer']}"[:200]
            if not _already_enqueued(src, kind):  # a retry of the run does not ask twice
                outbox.enqueue(src, manual, kind=kind)
        context = _Context(cfg, res, run)
        totals.update(context.source.prepare_events(src, context.spec))  # the spec only when needed
        feed = _StreamFeed(cfg, res, run["claimer"]) if cfg.rescore_stream else None
        try:
            while time.monotonic() - started < MAX_RUN_SECONDS:
                t0 = time.monotonic()
                events = outbox.claim(src, run["claimer"], cfg.rescore_batch_rows, cfg.rescore_claim_lease_seconds)
                _add(totals["seconds"], "claim", time.monotonic() - t0)
                if events:
                    hook("claimed")
                    outcome = _rescore_batch(context, src, events, totals["batches"], hook)
                    t0 = time.monotonic()
                    outbox.complete(src, run["claimer"], outcome)
                    _add(totals["seconds"], "complete", time.monotonic() - t0)
                    _count(totals, context, events, outcome)
                streamed = feed.drain_batch(context, src, totals, hook) if feed else 0
                if not events and not streamed:
                    break
        finally:
            if feed:
                totals["stream"] = feed.close()
        stats = outbox.activity(src)
    behind = outbox.falling_behind(stats, cfg.rescore_max_waiting, cfg.rescore_max_lag_seconds)
    delivery = None
    if behind:
        from churn import alerts

        delivery = alerts.send_alert("churn re-score falling behind", {"run_key": run["run_key"], "reasons": behind,
                                                                       "activity": stats})
    totals.update(activity=stats, alerts=behind, alert_delivery=delivery)
    totals["seconds"] = {k: round(v, 3) for k, v in totals["seconds"].items()}
    totals["stage_seconds"] = round(time.monotonic() - started, 3)
    totals["run_key"] = run["run_key"]
    log.info("re-score %s: %s", run["run_key"], totals)
    return totals


def _add(seconds: dict[str, float], key: str, value: float) -> None:
    seconds[key] = seconds.get(key, 0.0) + value


def _count(totals: dict[str, Any], context: "_Context", events: list, outcome: dict[int, str]) -> None:
    """Add one finished batch to the run's totals."""
    for key, value in context.last_seconds.items():
        _add(totals["seconds"], key, value)
    totals["batches"] += 1
    totals["events"] += len(events)
    totals["customers"] += len({e.customer_id for e in events})
    for value in outcome.values():
        totals[value] = totals.get(value, 0) + 1


class _StreamFeed:
    """Events from ``CHURN_RESCORE_STREAM`` (``churn.data.event_stream``), batch by batch, beside the outbox."""

    def __init__(self, cfg: ChurnConfig, res: Resources, consumer: str) -> None:
        if cfg.source == "file":
            raise ValueError("CHURN_RESCORE_STREAM carries customer ids only; a file source re-scores from delta "
                             "files (CHURN_RESCORE_DELTA_DIR). Unset CHURN_RESCORE_STREAM, or use a SQL source.")
        self.cfg, self.consumer = cfg, consumer
        self.client = res.redis()
        from churn.publish.redis_keys import is_cluster

        if is_cluster(self.client) and "{" not in cfg.rescore_stream:
            self.client.close()
            raise ValueError(f"CHURN_RESCORE_STREAM={cfg.rescore_stream!r} on a Redis Cluster: give the stream a hash "
                             "tag, e.g. '{churn:events}', so that its dead-letter stream lives in the same slot")
        self.stats = {"read": 0, "acknowledged": 0, "dead_lettered": 0}

    def drain_batch(self, context: "_Context", src, totals: dict[str, Any], hook: Callable[[str], None]) -> int:
        """Read one batch, dead-letter the malformed entries, re-score the rest, acknowledge; entries read."""
        from churn.data import event_stream
        from churn.data.outbox import ClaimedEvent

        cfg, stream = self.cfg, self.cfg.rescore_stream
        t0 = time.monotonic()
        entries = event_stream.read_batch(self.client, stream, self.consumer, cfg.rescore_batch_rows,
                                          cfg.rescore_claim_lease_seconds)
        _add(totals["seconds"], "stream_read", time.monotonic() - t0)
        if not entries:
            return 0
        self.stats["read"] += len(entries)
        hook("stream_read")
        limit = cfg.rescore_max_attempts
        reasons = {e.entry_id: f"delivered {e.deliveries} times without finishing (CHURN_RESCORE_MAX_ATTEMPTS="
                               f"{limit})" for e in entries if e.reason is None and e.deliveries > limit}
        dead = [e for e in entries if e.reason or e.entry_id in reasons]
        self.stats["dead_lettered"] += event_stream.dead_letter(self.client, stream, dead, reasons)
        good = [e for e in entries if e.reason is None and e.entry_id not in reasons]
        if good:
            # outbox-shaped events (negative ids: never an outbox event id) through the same batch code
            events = [ClaimedEvent(-(i + 1), e.customer_id, e.kind, datetime.fromisoformat(e.event_at),
                                   e.deliveries) for i, e in enumerate(good)]
            outcome = _rescore_batch(context, src, events, totals["batches"], hook)
            t0 = time.monotonic()
            # only now: both stores hold the new scores (a crash before this re-delivers, and the re-score is
            # idempotent)
            self.stats["acknowledged"] += event_stream.acknowledge(self.client, stream, [e.entry_id for e in good])
            _add(totals["seconds"], "stream_ack", time.monotonic() - t0)
            _count(totals, context, events, outcome)
        return len(entries)

    def close(self) -> dict[str, int]:
        """The feed's counts; the Redis client is closed."""
        self.client.close()
        return dict(self.stats)


def _already_enqueued(conn, kind: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM churn.rescore_outbox WHERE kind = %s)", (kind,))
        found = cur.fetchone()[0]
    conn.rollback()
    return bool(found)


class _Context:
    """What every batch of a run shares: the served batch, its spec, the verified champion, the decile cuts."""

    def __init__(self, cfg: ChurnConfig, res: Resources, run: dict) -> None:
        from churn.data.ingest import source_for

        self.cfg, self.res, self.run = cfg, res, run
        self.source = source_for(cfg, res)
        self.run_dir = cfg.state_dir / "rescore" / run["run_key"]
        self.last_seconds: dict[str, float] = {}
        self._served: tuple[str, str] | None | bool = False  # (run_key, table) once looked up; False: not yet
        self._spec = None
        self._model: tuple | None = None
        self._arm_models: dict[str, Any] = {}

    def served(self) -> tuple[str, str] | None:
        """(run key, table) of the batch ``churn.scores_current`` serves, looked up once per run."""
        if self._served is False:
            from churn.publish.refresh import current_batch

            with self.res.pg_session() as conn, conn.cursor() as cur:
                self._served = current_batch(cur)
        return self._served

    def spec(self):
        """The dataset spec of the served batch's run (what the champion was trained and validated on)."""
        if self._spec is None:
            from churn.data.spec import SPEC_FILE, load_run_spec

            served = self.served()
            if served and (self.cfg.runs_dir / served[0] / SPEC_FILE).exists():
                self._spec = load_run_spec(self.cfg.runs_dir / served[0])
            else:
                self._spec = self.source.configured_spec()
        return self._spec

    def model(self):
        """(champion, model, signature, decile cuts of the served batch), loaded and verified once per run."""
        if self._model is None:
            import numpy as np

            from churn.model import registry

            served = self.served()
            with self.res.pg_session() as conn:
                champ = registry.champion(conn)
                if champ is None:
                    raise NoChampionError("no champion model: events wait in the outbox until the nightly run "
                                          "has promoted one")
                cuts: list[float] = []
                if served:
                    # The served batch's decile boundaries: a refreshed customer's decile says where the
                    # new score falls in tonight's population.
                    with conn.cursor() as cur:
                        cur.execute(f"SELECT percentile_disc(ARRAY[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]) WITHIN "
                                    f"GROUP (ORDER BY churn_probability) FROM churn.{served[1]}")
                        cuts = [float(v) for v in (cur.fetchone()[0] or [])]
                conn.rollback()
            model, signature = registry.load_verified(champ.artifact_path, champ.artifact_sha256)
            self._model = (champ, model, signature, np.asarray(cuts, dtype=np.float32))
        return self._model

    def arm_model(self, version: str):
        """The (verified) model of an experiment arm's served ``version``, loaded once per run (it reads the
        champion's columns: checked when the experiment's models were resolved)."""
        if version not in self._arm_models:
            from churn.model import registry

            with self.res.pg_session() as conn:
                record = registry.get(conn, version)
            self._arm_models[version] = registry.load_verified(record.artifact_path, record.artifact_sha256)[0]
        return self._arm_models[version]

    def arm_versions(self, customer_ids: list[str]) -> dict[str, str]:
        """The model version the served batch gave each experiment customer (its frozen arm's model)."""
        from churn.publish.refresh import served_arms

        served = self.served()
        if not served or not customer_ids:
            return {}
        with self.res.pg_session() as conn, conn.cursor() as cur:
            arms = served_arms(cur, served[1], customer_ids)
        return {cid: version for cid, (version, experiment, _) in arms.items() if experiment}


def _rescore_batch(ctx: _Context, src, events: list, index: int, hook: Callable[[str], None]) -> dict[int, str]:
    """One claimed batch through features, validation, scoring and both stores; the outcome of each event."""
    import pandas as pd

    from churn.data.validate import validate_snapshot
    from churn.model.score import deciles_from_cuts, predict, risk_bands
    from churn.publish import refresh

    cfg, seconds = ctx.cfg, {}
    ctx.last_seconds = seconds
    outcome: dict[int, str] = {}
    batch_key = f"{ctx.run['run_key']}-b{index}"
    batch_dir = ctx.run_dir / f"batch-{index:04d}"
    quarantine: list[tuple[int, str | None, str]] = []
    latest_event: dict[str, Any] = {}
    for event in events:
        if event.customer_id is None:
            quarantine.append((event.event_id, None, "event without a customer id"))
        elif event.attempts > cfg.rescore_max_attempts:
            quarantine.append((event.event_id, event.customer_id,
                               f"claimed {event.attempts} times without finishing (CHURN_RESCORE_MAX_ATTEMPTS)"))
        else:
            latest_event[event.customer_id] = max(latest_event.get(event.customer_id, event.event_at), event.event_at)
    ids = sorted(latest_event)
    scored_ids: set[str] = set()
    applied = refresh.RefreshOutcome([], [], [], None)
    if ids:
        champ, model, signature, cuts = ctx.model()
        spec = ctx.spec()
        t0 = time.monotonic()
        data_at = datetime.now(timezone.utc)  # every event committed before this moment is in the features
        as_of = (data_at + timedelta(days=1)).date()
        # The nightly's extraction: a SQL source's query filtered to the ids, a file source's delta rows.
        snapshot = ctx.source.event_snapshot(src, events, ids, spec, batch_dir / "score_raw.parquet", as_of)
        seconds["features"] = time.monotonic() - t0
        if snapshot.rows:  # else every id was unknown: nothing to validate or score
            t0 = time.monotonic()
            with ctx.res.pg_session() as conn:
                validated = validate_snapshot(
                    conn, snapshot.path, batch_key, "event", batch_dir, max_bad_row_fraction=1.0, training=False,
                    spec=spec, as_of=as_of, max_row_count_change=1.0, max_data_age_days=cfg.max_data_age_days,
                    chunk_rows=cfg.ingest_chunk_rows, population_checks=False, render_docs=False)
            seconds["validate"] = time.monotonic() - t0
            t0 = time.monotonic()
            frame = signature.enforce(pd.read_parquet(validated.clean_path), max_unknown_fraction=0.0)
            proba = predict(model, signature, frame) if len(frame) else []
            frame_ids = frame[signature.id_column].astype("str").to_numpy() if len(frame) else []
            # An experiment's customer is re-scored by the model of its (frozen) arm, as the batch served it.
            arm_versions = ctx.arm_versions(list(frame_ids))
            versions = [arm_versions.get(c, champ.version) for c in frame_ids]
            for version in sorted(set(versions) - {champ.version}):
                rows = [i for i, v in enumerate(versions) if v == version]
                proba[rows] = predict(ctx.arm_model(version), signature, frame.iloc[rows])
            scores = pd.DataFrame({
                "customer_id": frame_ids,
                "model_version": versions,
                "churn_probability": proba,
                "risk_band": risk_bands(proba, cfg.band_cuts) if len(frame) else [],
                "risk_decile": deciles_from_cuts(proba, cuts) if len(frame) else []})
            scores["event_at"] = [latest_event[c] for c in scores["customer_id"]]
            scored_ids = set(scores["customer_id"])
            seconds["score"] = time.monotonic() - t0
            t0 = time.monotonic()
            with ctx.res.pg_session() as conn:
                # one history row per customer and run (run_id = the run key): a retry replaces, never adds
                applied = refresh.apply_postgres(conn, scores, model_version=champ.version, run_id=ctx.run["run_key"],
                                                 scored_at=datetime.now(timezone.utc), data_at=data_at)
                seconds["write_postgres"] = time.monotonic() - t0
                hook("written_postgres")
                t0 = time.monotonic()
                client = ctx.res.redis()
                try:
                    refresh.write_redis(client, conn, applied.applied, prefix=cfg.redis_key_prefix,
                                        lock_wait_seconds=cfg.publish_lock_wait_seconds,
                                        lock_lease_seconds=cfg.publish_lease_seconds)
                finally:
                    client.close()
                seconds["write_redis"] = time.monotonic() - t0
                hook("written_redis")
        returned = set(pd.read_parquet(snapshot.path, columns=[spec.id_column])[spec.id_column].astype("str"))
        missing = ctx.source.unknown_customer
        for cid in ids:
            if cid not in returned:
                quarantine.extend((e.event_id, cid, missing) for e in events if e.customer_id == cid)
    per_customer = {**{c: "rescored" for c in applied.applied}, **{c: "superseded" for c in applied.superseded},
                    **{c: "not_served" for c in applied.not_served}}
    for event in events:
        if event.customer_id in per_customer:
            outcome[event.event_id] = per_customer[event.customer_id]
        elif event.customer_id in latest_event and event.customer_id not in scored_ids:
            outcome[event.event_id] = "quarantined"  # by validation, or unknown (recorded below)
    for event_id, cid, reason in quarantine:
        outcome[event_id] = "quarantined"
    if quarantine:
        _quarantine_events(ctx.res, batch_key, quarantine)
    return outcome


def _quarantine_events(res: Resources, batch_key: str, rows: list[tuple[int, str | None, str]]) -> None:
    """Events that cannot be re-scored go to churn.quarantine (dataset ``event_outbox``) with the reason."""
    from psycopg2.extras import execute_values

    from churn.db import to_jsonb

    with res.pg_session() as conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) "
                            "VALUES %s ON CONFLICT DO NOTHING",
                       [(batch_key, "event_outbox", event_id, cid, [reason], to_jsonb({"event_id": event_id}))
                        for event_id, cid, reason in rows])
        conn.commit()
