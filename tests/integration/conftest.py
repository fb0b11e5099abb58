"""Integration tier: real Postgres/Redis (the session's embedded servers), SFTP and SMTP servers started by
fixtures, TPOT on a real Dask cluster; no DAG run."""

from __future__ import annotations

import uuid
from datetime import date

import pandas as pd
import psycopg2
import pytest

from churn.config import ChurnConfig
from churn.connections import Resources
from tests.support.scores import two_runs
from tests.support.servers import fresh_pg_url, pg_admin_url, pg_conn, redis_client, redis_url, services

# Server fixtures of this tier (one embedded Postgres + Valkey per session).
__all__ = ["fresh_pg_url", "pg_admin_url", "pg_conn", "redis_client", "redis_url", "services"]

MODEL_AS_OF = date(2026, 11, 20)


@pytest.fixture
def scores(tmp_path):
    """Run A: customers 1..6000; run B: 1001..8000 (1000 dropped, 2000 added)."""
    return two_runs(tmp_path)


@pytest.fixture(scope="module")
def model_data(services, pg_admin_url, tmp_path_factory):
    """Source tables in their own database, then the real start_run -> ingest -> split stages (registry and gate
    tests)."""
    from churn.stages import common as common_stages, data as data_stages
    from tests.support.stage_refs import validated_ref
    from churn.data.generate import generate, load_source_tables
    from churn.model.features import ModelSignature
    from churn.model.train import fit_baseline

    name = f"m_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = services.pg_url(name)
    conn = psycopg2.connect(url)
    load_source_tables(conn, generate(6000, MODEL_AS_OF, seed=17))
    conn.close()
    state = tmp_path_factory.mktemp("model_state")
    cfg = ChurnConfig(state_dir=state)
    res = Resources.from_urls(url, services.redis_url)
    run = common_stages.start_run(cfg, res, MODEL_AS_OF, "test-run")
    ingested = data_stages.ingest(cfg, res, run)
    splits = data_stages.split(cfg, res, run, validated_ref(train_clean=ingested["train"]["path"]))
    train = pd.read_parquet(splits["paths"]["train"])
    valid = pd.read_parquet(splits["paths"]["valid"])
    test = pd.read_parquet(splits["paths"]["test"])
    from churn.data.ingest import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES

    signature = ModelSignature.infer(train, "customer_id", "churned", NUMERIC_FEATURES, BOOLEAN_FEATURES,
                                     CATEGORICAL_FEATURES)
    baseline = fit_baseline(train, valid, signature, random_state=0)
    yield {"url": url, "res": res, "cfg": cfg, "run": run, "splits": splits, "train": train, "valid": valid,
           "test": test, "signature": signature, "model": baseline.pipeline, "state": state}
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()
