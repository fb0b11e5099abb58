"""Between nights: re-score the customers touched by events (complaints, plan changes, usage) within seconds.

Scheduled on the ``churn_rescore_outbox`` asset, whose ``AssetWatcher`` runs
``churn.data.outbox_trigger.OutboxTrigger`` in the triggerer: it polls ``churn.rescore_outbox`` (filled by
triggers on the source tables) and fires when new events wait. With ``CHURN_RESCORE_STREAM`` set, a
second watcher (``StreamTrigger``) fires when producers ``XADD`` events to that Redis Stream. Each run
drains the outbox and the stream batch by batch through the nightly's own feature query, suite and
champion (``churn.stages.rescore``). A manual run can name customers to re-score (Params:
``customer_ids``); they go through the same outbox.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetWatcher, Param, dag, task

from churn.alerts import ChurnAlertNotifier
from churn.config import ChurnConfig
from churn.data.ingest import outbox_watch
from churn.data.outbox_trigger import OutboxTrigger, StreamTrigger

CONFIG = ChurnConfig.from_env()  # environment only: no I/O at parse time
_WATCH = outbox_watch(CONFIG)  # the outbox's database and a file source's delta folder
_WATCHERS = [AssetWatcher(name="churn_rescore_outbox_watcher", trigger=OutboxTrigger(
    conn_id=_WATCH["conn_id"], url_env=_WATCH["url_env"], poll_seconds=CONFIG.rescore_poll_seconds,
    delta_dir=_WATCH["delta_dir"]))]
if CONFIG.rescore_stream:  # events XADDed to a Redis Stream, besides the outbox
    _WATCHERS.append(AssetWatcher(name="churn_rescore_stream_watcher", trigger=StreamTrigger(
        stream=CONFIG.rescore_stream, conn_id=CONFIG.redis_conn_id, poll_seconds=CONFIG.rescore_poll_seconds)))
OUTBOX = Asset("churn_rescore_outbox", watchers=_WATCHERS)


@dag(
    dag_id="churn_rescore",
    schedule=[OUTBOX],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,  # two runs may drain at once: claims keep every event to exactly one of them
    tags=["churn", "events"],
    default_args={"retries": 3, "retry_delay": timedelta(seconds=5), "execution_timeout": timedelta(minutes=15),
                  "on_failure_callback": ChurnAlertNotifier("churn_rescore task failed")},
    params={"customer_ids": Param([], type="array", items={"type": "string"}, title="Customers to re-score",
                                  description="Ids to re-score now through the event path (empty: just drain "
                                              "the outbox).")},
    doc_md=__doc__,
)
def churn_rescore():
    """One task: drain the outbox (``churn.stages.rescore.rescore``)."""

    @task(execution_timeout=timedelta(minutes=15))
    def rescore(params: dict | None = None, run_id: str | None = None) -> dict:
        from churn.stages import run_task
        from churn.stages.rescore import rescore as rescore_stage, start_rescore

        return run_task(rescore_stage, start_rescore(run_id or "manual", params))

    rescore()


churn_rescore()
