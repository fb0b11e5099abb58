"""Fencing (issue 26 item 17): a stalled Redis publisher writes nothing once its lease is gone; champion
changes land in an append-only history, and a gate-refused model needs an explicit override and a reason."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import redis

from churn.publish import redis_store as rs
from churn.publish.redis_encoding import Fence, encode_json, send_fenced
from tests.support.scores import write_scores

OLD, NEW = "2026-11-20", "2026-11-21"
N = 600


def _runs_served(admin, layout: str) -> set[str]:
    return {rs.lookup_score(admin, f"C{i:08d}", layout=layout, buckets=64)["run_id"] for i in range(1, N + 1)}


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_a_publisher_stalled_past_its_lease_writes_no_batch_after_another_took_over(
        redis_url, redis_client, tmp_path, monkeypatch, layout):
    """Publisher A stalls just before it sends a batch (its lease check already passed); meanwhile its lease
    lapses and publisher B publishes a newer run. When A resumes, the server refuses A's batch whole.

    Without fencing A's batch lands on top of B's run: records of two runs behind B's marker.
    """
    old_path = write_scores(tmp_path / "old.parquet", OLD, 0, N, seed=1)
    new_path = write_scores(tmp_path / "new.parquet", NEW, 0, N, seed=2)
    a = redis.Redis.from_url(redis_url, client_name="publisher-a")  # the platform's ACL user, as the pipeline
    b = redis.Redis.from_url(redis_url, client_name="publisher-b")
    data_key = {"json": b"churn:score:", "hash": b"churn:h:", "compact": b"churn:c:"}[layout]
    original = redis.connection.AbstractConnection.send_packed_command
    stalled = []

    def send(self, packet, check_health=True):
        chunks = packet if isinstance(packet, (list, tuple)) else [packet]
        if (self.client_name == "publisher-a" and not stalled
                and any(data_key in bytes(memoryview(c)) for c in chunks)):
            stalled.append(True)  # A is paused here (GC, SIGSTOP) past its lease...
            redis_client.delete(rs.lock_key())  # ...the lease lapses...
            rs.publish_scores(b, new_path, NEW, "m-new", layout=layout, buckets=64, batch_rows=100)  # ...B publishes
        return original(self, packet, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    with pytest.raises(rs.RedisPublishError) as raised:
        rs.publish_scores(a, old_path, OLD, "m-old", layout=layout, buckets=64, batch_rows=100,
                          hash_partition_rows=200, lock_lease_seconds=5)
    assert stalled
    assert _runs_served(redis_client, layout) == {NEW}  # not one record of A's stale batch
    assert rs.served_run(redis_client) == NEW
    assert isinstance(raised.value, rs.LeaseLost), raised.value
    assert "lease" in str(raised.value) and "CHURN_PUBLISH_LEASE_SECONDS" in str(raised.value)


def test_a_batch_sent_with_a_stale_lease_token_writes_nothing(redis_url, redis_client, tmp_path):
    """The internal batch write with A's token after B acquired the lease: refused, B's data and lease intact."""
    path = write_scores(tmp_path / "old.parquet", OLD, 0, 50, seed=1)
    client = redis.Redis.from_url(redis_url)
    lease_a = client.lock(rs.lock_key(), timeout=5, thread_local=False)
    assert lease_a.acquire(blocking=False)
    redis_client.delete(rs.lock_key())  # A's lease lapsed while A was stopped
    lease_b = client.lock(rs.lock_key(), timeout=5, thread_local=False)
    assert lease_b.acquire(blocking=False)
    redis_client.set("churn:score:C00000001", b"B's record")
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=50))

    with pytest.raises(rs.LeaseLost, match="lease churn:publish_lock is no longer this publisher's"):
        send_fenced(client, Fence(rs.lock_key(), lease_a.local.token, 5000), encode_json(batch, "churn"))
    assert redis_client.get("churn:score:C00000001") == b"B's record"
    assert redis_client.get("churn:score:C00000002") is None
    assert redis_client.get(rs.lock_key()) == lease_b.local.token  # B's lease neither renewed nor dropped by A
    # the holder's own write goes through and renews its lease
    send_fenced(client, Fence(rs.lock_key(), lease_b.local.token, 9000), encode_json(batch, "churn"))
    assert rs.lookup_score(redis_client, "C00000002", layout="json")["run_id"] == OLD
    assert 5000 < redis_client.pttl(rs.lock_key()) <= 9000
    assert client.ping()  # the refused connection went back to the pool clean (no WATCH left behind)


# --- promotions: append-only history, override of the gate ---------------------------------------------------


def _version(conn, models_dir, version: str, status: str) -> None:
    """A registered version with a real (stand-in) artifact, as the register stage leaves it."""
    from churn.model import registry
    from churn.model.features import ModelSignature

    signature = ModelSignature("customer_id", "churned", ["x"], [])
    path, sha = registry.save_artifact({"stand-in": "model"}, signature, models_dir, version)
    registry.register(conn, version=version, run_key=version[:10], model_name="stand_in", status=status,
                      reason=f"the gate: {status}", metrics={"roc_auc": 0.7}, params={}, signature=signature,
                      artifact_path=path, artifact_sha256=sha, data_fingerprint="fp")


def _promotions(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT version, previous_champion, actor, reason, kind, forced FROM churn.promotions ORDER BY id")
        rows = cur.fetchall()
    conn.commit()
    return rows


GOOD, BAD, STUCK = "2026-11-19-stand_in-aaaaaa", "2026-11-20-stand_in-bbbbbb", "2026-11-21-stand_in-cccccc"


def test_a_refused_version_becomes_champion_only_by_a_forced_override_with_a_reason(pg_conn, tmp_path):
    from churn.model import registry

    _version(pg_conn, tmp_path, GOOD, "challenger")
    _version(pg_conn, tmp_path, BAD, "refused")
    _version(pg_conn, tmp_path, STUCK, "challenger")
    assert registry.promote(pg_conn, GOOD, "passed the gate", kind="gate", actor="churn_nightly gate")

    with pytest.raises(registry.OverrideRequired, match=r"was refused by the gate.*--force --reason"):
        registry.promote(pg_conn, BAD, "rollback", kind="rollback", actor="alice")
    with pytest.raises(registry.OverrideRequired, match="needs a reason"):
        registry.promote(pg_conn, BAD, "   ", kind="rollback", actor="alice", force=True)
    with pytest.raises(registry.OverrideRequired, match="never champion"):  # approved but never champion
        registry.promote(pg_conn, STUCK, "rollback", kind="rollback", actor="alice")
    with pytest.raises(registry.RegistryError, match="only the challenger it approved"):
        registry.promote(pg_conn, BAD, "sneaking past", kind="gate")
    assert registry.champion(pg_conn).version == GOOD and len(_promotions(pg_conn)) == 1  # nothing moved

    why = "holiday week: the refused model's recall is what the retention team needs"
    assert registry.promote(pg_conn, BAD, why, kind="rollback", actor="alice", force=True)
    assert registry.champion(pg_conn).version == BAD
    assert registry.get(pg_conn, GOOD).status == "retired"
    # back to the gate's champion: a plain rollback; to the overridden one again: an override again
    assert registry.override_needed(pg_conn, GOOD) is None
    registry.promote(pg_conn, GOOD, "undo the override", kind="rollback", actor="bob")
    assert "only by override" in registry.override_needed(pg_conn, BAD)
    with pytest.raises(registry.OverrideRequired, match="only by override"):
        registry.promote(pg_conn, BAD, "again", kind="rollback", actor="bob")
    assert _promotions(pg_conn) == [
        (GOOD, None, "churn_nightly gate", "passed the gate", "gate", False),
        (BAD, GOOD, "alice", why, "override", True),
        (GOOD, BAD, "bob", "undo the override", "rollback", False),
    ]


def test_promotion_history_is_append_only_for_the_owner_and_the_publisher(pg_conn, fresh_pg_url, tmp_path):
    import uuid

    import psycopg2

    from churn.migrate import migrate
    from churn.model import registry
    from tests.support.servers import url_as

    _version(pg_conn, tmp_path, GOOD, "challenger")
    _version(pg_conn, tmp_path, BAD, "challenger")
    registry.promote(pg_conn, GOOD, "passed the gate", kind="gate")
    for statement in ("UPDATE churn.promotions SET reason = 'rewritten'", "DELETE FROM churn.promotions",
                      "TRUNCATE churn.promotions"):
        with pytest.raises(psycopg2.Error, match="append-only"):  # the owner (here a superuser) too
            with pg_conn.cursor() as cur:
                cur.execute(statement)
        pg_conn.rollback()

    publisher = f"pub_{uuid.uuid4().hex[:8]}"
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {publisher} LOGIN PASSWORD 'pw'")
    pg_conn.commit()
    try:
        migrate(pg_conn, publisher=publisher)
        as_publisher = psycopg2.connect(url_as(fresh_pg_url, publisher, "pw"))
        try:
            registry.promote(as_publisher, BAD, "passed the gate", kind="gate")  # the pipeline's role may append
            for statement in ("UPDATE churn.promotions SET reason = 'rewritten'", "DELETE FROM churn.promotions",
                              "TRUNCATE churn.promotions"):
                with pytest.raises(psycopg2.Error, match="permission denied|append-only"):
                    with as_publisher.cursor() as cur:
                        cur.execute(statement)
                as_publisher.rollback()
        finally:
            as_publisher.close()
        assert [(r[0], r[1], r[2], r[4]) for r in _promotions(pg_conn)] == [
            (GOOD, None, "postgres", "gate"), (BAD, GOOD, publisher, "gate")]
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP OWNED BY {publisher}")
            cur.execute(f"DROP ROLE {publisher}")
        pg_conn.commit()


def test_the_gate_promotion_of_the_register_stage_writes_a_gate_row(pg_conn, fresh_pg_url, services, tmp_path):
    import pandas as pd

    from churn.config import ChurnConfig
    from churn.connections import Resources
    from churn.model import registry
    from churn.model.features import ModelSignature
    from churn.stages import model as model_stages
    from churn.stages.results import Candidate, GateResult, SplitResult

    signature = ModelSignature("customer_id", "churned", ["x"], [])
    path, sha = registry.save_artifact({"stand-in": "model"}, signature, tmp_path / "candidates", "stand_in")
    rows = pd.DataFrame({"customer_id": ["C1", "C2", "C3"], "x": [0.1, 0.2, 0.3], "churned": [0, 1, 0]})
    paths = {name: str(tmp_path / f"{name}.parquet") for name in ("train", "test")}
    for p in paths.values():
        rows.to_parquet(p, index=False)
    version = "2026-11-20-stand_in-dddddd"
    candidate = Candidate(name="stand_in", path=path, sha256=sha, valid_roc_auc=0.8, fit_seconds=0.1, version=version,
                          metrics={"roc_auc": 0.8})
    evaluation = GateResult(evaluated=True, promote=True, reason="first model: test ROC AUC 0.800 >= 0.6",
                            challenger="stand_in", candidates=[candidate.as_dict()]).as_dict()
    cfg = ChurnConfig(state_dir=tmp_path / "state", export_pmml=False)
    res = Resources.from_urls(fresh_pg_url, services.redis_url)
    run = {"run_key": "2026-11-20", "run_dir": str(tmp_path / "run")}
    splits = SplitResult(paths=paths, counts={name: {"rows": 3, "positives": 1} for name in paths},
                         data_fingerprint="fp", rows_available=3, rows_used=3).as_dict()
    done = model_stages.register(cfg, res, run, splits, evaluation)
    assert done["champion"] == version
    assert _promotions(pg_conn) == [(version, None, "churn_nightly gate (run 2026-11-20)",
                                     "first model: test ROC AUC 0.800 >= 0.6", "gate", False)]


def _registry_cli(args: list[str], url: str):
    import os
    import subprocess
    import sys

    from tests.support import REPO_ROOT

    env = {**os.environ, "CHURN_POSTGRES_URL": url, "PYTHONPATH": str(REPO_ROOT / "include")}
    return subprocess.run([sys.executable, "-m", "churn.model.registry", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


def test_the_cli_names_the_flags_and_records_the_override(pg_conn, fresh_pg_url, tmp_path):
    from churn.model import registry

    _version(pg_conn, tmp_path, GOOD, "challenger")
    _version(pg_conn, tmp_path, BAD, "refused")
    registry.promote(pg_conn, GOOD, "passed the gate", kind="gate")

    refused = _registry_cli(["rollback", BAD], fresh_pg_url)
    assert refused.returncode == 2 and "--force --reason" in refused.stderr and "refused by the gate" in refused.stderr
    no_reason = _registry_cli(["rollback", BAD, "--force"], fresh_pg_url)
    assert no_reason.returncode == 2 and "--force needs --reason" in no_reason.stderr
    assert registry.champion(pg_conn).version == GOOD

    done = _registry_cli(["rollback", BAD, "--force", "--reason", "incident 42: champion mis-scores", "--actor",
                          "carol"], fresh_pg_url)
    assert done.returncode == 0, done.stderr
    assert registry.champion(pg_conn).version == BAD
    assert _promotions(pg_conn)[-1] == (BAD, GOOD, "carol", "incident 42: champion mis-scores", "override", True)
    listing = _registry_cli(["history"], fresh_pg_url)
    assert listing.returncode == 0 and "override\tTrue\tincident 42" in listing.stdout


def test_an_event_refresh_stalled_past_its_lease_writes_nothing(pg_conn, redis_client, monkeypatch):
    """The re-score path's Redis write is fenced like the nightly publish's (issue 26 item 17)."""
    from datetime import datetime, timezone

    import churn.publish.refresh as refresh
    from churn.db import ensure_schema
    from churn.publish.redis_keys import lock_key, meta_key, score_key

    ensure_schema(pg_conn)
    now = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    with pg_conn.cursor() as cur:
        cur.execute("INSERT INTO churn.score_refreshes VALUES ('C1', 0.9, 'high', 10, 'v1', 'event-1', %s, %s, %s)",
                    (now, now, now))
    pg_conn.commit()
    redis_client.hset(meta_key(), mapping={"run_id": "2026-11-20", "layout": "json"})
    original = refresh.served_meta

    def stalled(client, prefix="churn"):  # the lease lapses and a nightly publish takes it meanwhile
        meta = original(client, prefix)
        client.set(lock_key(prefix), "nightly-publisher-token")
        return meta

    monkeypatch.setattr(refresh, "served_meta", stalled)
    with pytest.raises(refresh.RedisPublishError):
        refresh.write_redis(redis_client, pg_conn, ["C1"], lock_wait_seconds=5, lock_lease_seconds=5)
    assert redis_client.get(score_key("C1")) is None
    assert redis_client.get(lock_key()) == b"nightly-publisher-token"  # the new holder's lease untouched
    monkeypatch.setattr(refresh, "served_meta", original)
    redis_client.delete(lock_key())
    assert refresh.write_redis(redis_client, pg_conn, ["C1"], lock_wait_seconds=5, lock_lease_seconds=5) == 1
    assert b'"source": "event"' in redis_client.get(score_key("C1"))
