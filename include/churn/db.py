"""The platform's own Postgres tables (schema ``churn``), created idempotently."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the types of the psycopg2 objects every store function takes
    from psycopg2.extensions import connection as PgConnection
    from psycopg2.extensions import cursor as PgCursor

# Bump when PLATFORM_DDL changes: tasks that find the schema at this version run no DDL (the publisher role
# they run as may not), and ``python -m churn.migrate`` (the owner role) brings an older one up to it.
SCHEMA_VERSION = 5  # 2: churn.promotions; 3: churn.experiment_* tables; 4: their index by customer;
# 5: churn.experiment_decisions, promotions of kind 'experiment'

PLATFORM_DDL = """
CREATE SCHEMA IF NOT EXISTS churn;

CREATE TABLE IF NOT EXISTS churn.schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT now(),
    migrated_by text NOT NULL DEFAULT current_user
);

CREATE TABLE IF NOT EXISTS churn.pipeline_runs (
    run_key text PRIMARY KEY,            -- the logical date the run covers, e.g. 2026-11-20
    airflow_run_id text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status text NOT NULL DEFAULT 'running',
    summary jsonb
);

CREATE TABLE IF NOT EXISTS churn.column_profiles (
    run_key text NOT NULL,
    dataset text NOT NULL,
    column_name text NOT NULL,
    profile jsonb NOT NULL,
    profiled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, dataset, column_name)
);

CREATE TABLE IF NOT EXISTS churn.validation_results (
    run_key text NOT NULL,
    dataset text NOT NULL,
    success boolean NOT NULL,
    rows_checked bigint NOT NULL,
    rows_quarantined bigint NOT NULL,
    result jsonb NOT NULL,
    validated_at timestamptz NOT NULL DEFAULT now(),
    suite_version text,                  -- which suite validated: file, a churn.suites version, or baseline
    PRIMARY KEY (run_key, dataset)
);

-- Added after the first release. Checked before altering: ALTER TABLE takes an exclusive lock even when
-- the column exists, and would wait behind any reader's open transaction on every stage's start.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'churn'
                   AND table_name = 'validation_results' AND column_name = 'suite_version') THEN
        ALTER TABLE churn.validation_results ADD COLUMN suite_version text;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS churn.suites (
    name text NOT NULL,
    version integer NOT NULL,
    status text NOT NULL DEFAULT 'active',
    suite jsonb NOT NULL,
    run_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS churn.quarantine (
    run_key text NOT NULL,
    dataset text NOT NULL,
    row_number bigint NOT NULL,
    customer_id text,
    reasons text[] NOT NULL,
    record jsonb NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, dataset, row_number)
);

CREATE TABLE IF NOT EXISTS churn.model_registry (
    version text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    run_key text NOT NULL,
    model_name text NOT NULL,
    status text NOT NULL,                -- champion | retired | refused | challenger
    reason text NOT NULL,
    metrics jsonb NOT NULL,
    params jsonb NOT NULL,
    signature jsonb NOT NULL,
    artifact_path text NOT NULL,
    artifact_sha256 text NOT NULL,
    formats text[] NOT NULL DEFAULT ARRAY['joblib'],
    data_fingerprint text NOT NULL,
    code_version text NOT NULL
);

CREATE TABLE IF NOT EXISTS churn.model_champion (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version text NOT NULL REFERENCES churn.model_registry(version),
    promoted_at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL
);

CREATE TABLE IF NOT EXISTS churn.score_runs (
    run_key text PRIMARY KEY,
    table_name text NOT NULL,
    model_version text NOT NULL,
    rows bigint NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    is_current boolean NOT NULL DEFAULT false
);

-- Event refreshes between nights (churn.publish.refresh): each customer's newest refresh, and all of them.
CREATE TABLE IF NOT EXISTS churn.score_refreshes (
    customer_id text PRIMARY KEY,
    churn_probability real NOT NULL,
    risk_band text NOT NULL,
    risk_decile smallint NOT NULL,
    model_version text NOT NULL,
    run_id text NOT NULL,                -- the re-score run, e.g. event-20261125T101502-3f9a1c
    scored_at timestamptz NOT NULL,
    data_at timestamptz NOT NULL,        -- when its features were read: newer than a batch's cutoff = shown
    event_at timestamptz NOT NULL        -- the newest event that asked for it
);
CREATE TABLE IF NOT EXISTS churn.score_refresh_log (
    LIKE churn.score_refreshes,          -- the same columns, one row per customer and re-score run
    PRIMARY KEY (customer_id, run_id)
);

-- Data drift (churn.data.drift): per run and feature, scoring snapshot vs the champion's training reference.
CREATE TABLE IF NOT EXISTS churn.drift_metrics (
    run_key text NOT NULL,
    feature text NOT NULL,
    kind text NOT NULL,                  -- numeric | boolean | categorical
    psi double precision,
    ks_statistic double precision,       -- numeric features only
    ks_pvalue double precision,
    reference_version text NOT NULL,     -- champion whose reference.parquet was compared
    reference_rows bigint NOT NULL,
    current_rows bigint NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, feature)
);

-- Monitoring (churn.monitoring): one row per run, replaced when the run is re-run.
CREATE TABLE IF NOT EXISTS churn.run_metrics (
    run_key text PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    model_version text,
    dry_run boolean NOT NULL DEFAULT false,
    rows_in bigint,
    rows_quarantined bigint,
    rows_scored bigint,
    rows_published bigint,
    stage_seconds jsonb NOT NULL,
    score_summary jsonb,                 -- mean, quantiles, band shares, 10-bin histogram
    prediction_psi double precision,     -- this run's scores vs the previous run's
    previous_run_key text,
    report_path text
);

-- Realized performance: how the scores published N days ago did against the churn seen since.
CREATE TABLE IF NOT EXISTS churn.realized_performance (
    scored_run_key text NOT NULL,
    model_version text NOT NULL,
    evaluated_on date NOT NULL,
    customers bigint NOT NULL,
    churned bigint NOT NULL,
    realized_roc_auc double precision,
    expected_roc_auc double precision,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scored_run_key, model_version)
);

-- Every champion change (churn.model.registry.promote), written in the transaction that moves the pointer.
-- Append-only for every role: grants bind the publisher, the trigger also binds the owner (who bypasses grants).
CREATE TABLE IF NOT EXISTS churn.promotions (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    version text NOT NULL REFERENCES churn.model_registry(version),
    previous_champion text,              -- null for the first champion
    actor text NOT NULL,                 -- who: the nightly gate, a UI user, the CLI's OS user
    reason text NOT NULL,
    kind text NOT NULL CONSTRAINT promotions_kind_check CHECK (kind IN ('gate', 'rollback', 'override', 'experiment')),
    forced boolean NOT NULL DEFAULT false,  -- an override of the gate's refusal (or of never-champion)
    CHECK (forced = (kind = 'override'))
);
REVOKE UPDATE, DELETE, TRUNCATE ON churn.promotions FROM PUBLIC;
CREATE OR REPLACE FUNCTION churn.promotions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'churn.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'this history is never rewritten; a new promotion or decision adds a row';
END $$;
DO $$ BEGIN  -- checked first: CREATE TRIGGER locks the table even when the trigger exists
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'churn.promotions'::regclass
                   AND tgname = 'promotions_append_only') THEN
        CREATE TRIGGER promotions_append_only BEFORE UPDATE OR DELETE ON churn.promotions
            FOR EACH ROW EXECUTE FUNCTION churn.promotions_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'churn.promotions'::regclass
                   AND tgname = 'promotions_no_truncate') THEN
        CREATE TRIGGER promotions_no_truncate BEFORE TRUNCATE ON churn.promotions
            FOR EACH STATEMENT EXECUTE FUNCTION churn.promotions_append_only();
    END IF;
END $$;

-- Experiments (churn.experiments.assignment): each customer's first arm, frozen while the experiment runs.
CREATE TABLE IF NOT EXISTS churn.experiment_assignments (
    experiment_id text NOT NULL,
    customer_id   text NOT NULL,
    arm           text NOT NULL,
    assigned_run  text NOT NULL,
    assigned_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, customer_id)
);
-- exports look a customer's arms up (experiment_arms column, holdouts left out)
CREATE INDEX IF NOT EXISTS experiment_assignments_customer ON churn.experiment_assignments (customer_id);
CREATE OR REPLACE FUNCTION churn.experiment_assignments_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'churn.experiment_assignments: an assignment is never changed (% refused)', TG_OP
        USING HINT = 'a customer keeps its first arm; start a new experiment (a new id or salt) to re-randomize';
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'churn.experiment_assignments'::regclass
                   AND tgname = 'experiment_assignments_frozen') THEN
        CREATE TRIGGER experiment_assignments_frozen BEFORE UPDATE ON churn.experiment_assignments
            FOR EACH ROW EXECUTE FUNCTION churn.experiment_assignments_frozen();
    END IF;
END $$;
-- Each night's split of every active experiment and its sample-ratio-mismatch check.
CREATE TABLE IF NOT EXISTS churn.experiment_splits (
    experiment_id text NOT NULL,
    night         date NOT NULL,
    run_key       text NOT NULL,
    counts        jsonb NOT NULL,       -- customers per arm, every assignment stored so far
    new_customers integer NOT NULL,     -- assigned this night
    chi2          double precision NOT NULL,
    p_value       double precision NOT NULL,
    flagged       boolean NOT NULL,     -- p < 0.001: the split is broken, results are withheld
    PRIMARY KEY (experiment_id, night)
);
-- A person's decision on an experiment that reached its sample size (churn.experiments.decisions), append-only.
CREATE TABLE IF NOT EXISTS churn.experiment_decisions (
    id            bigserial PRIMARY KEY,
    experiment_id text NOT NULL,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    decided_on    date NOT NULL,        -- the night it applies from (a stop ends the experiment that night)
    decision      text NOT NULL CHECK (decision IN ('promote', 'stop', 'extend')),
    arm           text,                 -- promote: the winning arm
    model_version text,                 -- promote: its model, now champion (churn.promotions says so too)
    decided_by    text NOT NULL,
    scored_on     date NOT NULL,        -- the judged night the decision was asked on
    customers     jsonb NOT NULL,       -- customers per arm then
    reason        text NOT NULL
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'churn.experiment_decisions'::regclass
                   AND tgname = 'experiment_decisions_append_only') THEN
        CREATE TRIGGER experiment_decisions_append_only BEFORE UPDATE OR DELETE ON churn.experiment_decisions
            FOR EACH ROW EXECUTE FUNCTION churn.promotions_append_only();
    END IF;
    -- schema 5: promotions decided on an experiment's realized results
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'promotions_kind_check'
                   AND pg_get_constraintdef(oid) LIKE '%experiment%') THEN
        ALTER TABLE churn.promotions DROP CONSTRAINT IF EXISTS promotions_kind_check;
        ALTER TABLE churn.promotions ADD CONSTRAINT promotions_kind_check
            CHECK (kind IN ('gate', 'rollback', 'override', 'experiment'));
    END IF;
END $$;
-- Realized results of every experiment, per scoring night whose outcomes matured (churn.experiments.realized).
CREATE TABLE IF NOT EXISTS churn.experiment_results (
    experiment_id text NOT NULL,
    scored_on     date NOT NULL,        -- the night whose served scores and arms are judged
    evaluated_on  date NOT NULL,        -- when the label window closed
    customers     integer NOT NULL,
    withheld      text,                 -- why no result is shown (a broken split), else null
    result        jsonb NOT NULL,       -- per arm: ROC AUC, PR AUC, Brier, reliability, top-k precision; uplifts, Qini
    PRIMARY KEY (experiment_id, scored_on)
);
"""


class SchemaNotMigrated(RuntimeError):
    """Schema ``churn`` is missing or older than this code, and the connected role may not create it."""


def schema_version(conn: PgConnection) -> int | None:
    """The version ``churn.schema_version`` records, or None when the schema was never migrated."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.schema_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            conn.commit()
            return None
        cur.execute("SELECT version FROM churn.schema_version")
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def ensure_schema(conn: PgConnection, *, migrate: bool = False) -> None:
    """Create or upgrade the platform tables if they are not at ``SCHEMA_VERSION`` (safe to call on every task).

    At the current version nothing is executed but one lookup, so a publisher role without DDL rights
    works; below it the DDL runs, and a role that may not run it gets :class:`SchemaNotMigrated` naming
    the command for the owner role. ``migrate`` runs the DDL whatever the recorded version.
    """
    import psycopg2

    if not migrate and (schema_version(conn) or 0) >= SCHEMA_VERSION:
        return
    try:
        with conn.cursor() as cur:
            # An advisory lock keeps concurrent first runs from racing on CREATE IF NOT EXISTS.
            cur.execute("SELECT pg_advisory_xact_lock(7411)")
            cur.execute(PLATFORM_DDL)
            cur.execute("INSERT INTO churn.schema_version (version) VALUES (%s) ON CONFLICT (singleton) DO UPDATE "
                        "SET version = greatest(churn.schema_version.version, EXCLUDED.version), migrated_at = now(), "
                        "migrated_by = current_user", (SCHEMA_VERSION,))
        conn.commit()
    except psycopg2.errors.InsufficientPrivilege as exc:
        conn.rollback()
        raise SchemaNotMigrated(
            f"schema churn is not at version {SCHEMA_VERSION} and this role may not migrate it "
            f"({exc.pgerror.strip() if exc.pgerror else exc}); run 'python -m churn.migrate --publisher <this role>' "
            "as the schema's owner (CHURN_POSTGRES_MIGRATION_URL)") from exc


def tables_present(conn: PgConnection, *tables: str) -> bool:
    """True if every ``schema.table`` exists: read-only paths check instead of running DDL."""
    with conn.cursor() as cur:
        cur.execute("SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) AS t", (list(tables),))
        present = cur.fetchone()[0]
    conn.commit()
    return bool(present)


def to_jsonb(value: Any) -> str:
    """JSON text for a jsonb parameter (NaN/inf become null, which JSON cannot hold)."""
    return json.dumps(_finite(value), default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
