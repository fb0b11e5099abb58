#!/usr/bin/env bash
# Roles and databases of the compose Postgres, run by the postgres image's entrypoint at the first start
# (empty data volume) from /docker-entrypoint-initdb.d. A .sh rather than a .sql file because the passwords
# come from the environment (.env through docker-compose.yaml), and a .sql init file cannot read it: psql
# gets them as -v variables and quotes them itself (:'name'), so any character is safe.
#
# Who is who (least privilege; none of these is a superuser, and only the superuser `postgres` may create
# roles or databases):
#   airflow          Airflow's metadata database `airflow` (its owner); may not connect to `churn`.
#   churn_owner      schema migration: owns database `churn` and schemas `churn` and `src`; runs the
#                    platform's DDL (the churn-migrate service) before any Airflow component starts.
#   churn_publisher  the pipeline (Airflow connection churn_postgres): reads and writes the platform's tables
#                    (no DDL on them), creates the per-run score tables and the served views it publishes.
#   churn_reader     consumers: SELECT on churn.scores_current and churn.scores_history only, read-only
#                    sessions, and an idle-in-transaction timeout so that a forgotten transaction cannot hold
#                    back the publisher's view switch.
#
# Idempotent, so it can also be run by hand to apply changed passwords from .env to a running server:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-init-churn-db.sh
set -euo pipefail

# Every secret is required: a role without a password must never be created by accident.
: "${POSTGRES_PASSWORD:?the superuser password is required}"
: "${AIRFLOW_DB_PASSWORD:?the password of the Airflow metadata role is required}"
: "${CHURN_PG_OWNER_PASSWORD:?the password of churn_owner is required}"
: "${CHURN_PG_PUBLISHER_PASSWORD:?the password of churn_publisher is required}"
: "${CHURN_PG_READER_PASSWORD:?the password of churn_reader is required}"

# The entrypoint exports PGPASSWORD for its own psql; when run by hand (docker compose exec) it is not set,
# and local connections need the password too (POSTGRES_INITDB_ARGS: --auth-local=scram-sha-256).
export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
superuser="${POSTGRES_USER:-postgres}"

psql -X -q -v ON_ERROR_STOP=1 --username "$superuser" --dbname postgres \
    -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v owner_password="$CHURN_PG_OWNER_PASSWORD" \
    -v publisher_password="$CHURN_PG_PUBLISHER_PASSWORD" \
    -v reader_password="$CHURN_PG_READER_PASSWORD" <<'SQL'
SET client_min_messages TO warning;  -- no "already exists, skipping" notices on a re-run
-- Roles: created when missing, then (re)set, so a re-run applies the current passwords and attributes.
-- NOINHERIT on the churn roles: none of them gains another role's rights through a membership granted later.
SELECT format('CREATE ROLE %I', name) FROM (VALUES ('airflow'), ('churn_owner'), ('churn_publisher'),
    ('churn_reader')) AS wanted(name) WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) \gexec
ALTER ROLE airflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'airflow_password';
ALTER ROLE churn_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    PASSWORD :'owner_password';
ALTER ROLE churn_publisher LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    PASSWORD :'publisher_password';
ALTER ROLE churn_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    PASSWORD :'reader_password';
-- A consumer cannot write even through a future grant or a function, and an idle open transaction is ended
-- before it can stall the publish (the view switch needs a brief exclusive lock on the views).
ALTER ROLE churn_reader SET default_transaction_read_only = on;
ALTER ROLE churn_reader SET idle_in_transaction_session_timeout = '30s';

-- Databases: each owned by its own role, and nobody else may connect unless granted (PUBLIC has CONNECT and
-- TEMPORARY by default): the churn roles never reach Airflow's metadata, Airflow's role never the scores.
SELECT 'CREATE DATABASE airflow OWNER airflow' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'airflow') \gexec
SELECT 'CREATE DATABASE churn OWNER churn_owner' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'churn') \gexec
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE churn FROM PUBLIC;
-- No CREATE on the database: tasks find schema churn at its version (churn-migrate ran first) and run no DDL
-- outside it (churn.db.ensure_schema). TEMPORARY: the export stage's temp table.
GRANT CONNECT, TEMPORARY ON DATABASE churn TO churn_publisher;
GRANT CONNECT ON DATABASE churn TO churn_reader;

\connect churn
SET client_min_messages TO warning;
CREATE SCHEMA IF NOT EXISTS churn AUTHORIZATION churn_owner;
-- Demo / source tables loaded into the platform's database: loaded by churn_owner, read by the pipeline.
CREATE SCHEMA IF NOT EXISTS src AUTHORIZATION churn_owner;

-- The publisher writes the platform's tables (all created by churn_owner's migration) but cannot alter or
-- drop them. CREATE on schema churn is what publishing needs: each run is COPYed into its own new table and
-- the served views are replaced over it (churn.publish.postgres); the publisher owns only those.
GRANT USAGE, CREATE ON SCHEMA churn TO churn_publisher;
ALTER DEFAULT PRIVILEGES FOR ROLE churn_owner IN SCHEMA churn
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO churn_publisher;
ALTER DEFAULT PRIVILEGES FOR ROLE churn_owner IN SCHEMA churn
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO churn_publisher;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA churn TO churn_publisher;  -- re-runs: tables since
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA churn TO churn_publisher;
GRANT USAGE ON SCHEMA src TO churn_publisher;
ALTER DEFAULT PRIVILEGES FOR ROLE churn_owner IN SCHEMA src GRANT SELECT ON TABLES TO churn_publisher;
GRANT SELECT ON ALL TABLES IN SCHEMA src TO churn_publisher;

-- The reader sees the served views and nothing else: no table of schema churn (registry, quarantine, run
-- tables), no src. The views do not exist before the first publish, and the pipeline does not grant on them
-- in this stack (CHURN_PG_READER_ROLE is empty: its role management needs CREATEROLE), so an event trigger
-- grants SELECT whenever the publisher (re)creates one of them. It runs as the role that created the view
-- (not SECURITY DEFINER): only that view's owner can grant, and it grants exactly these two views.
GRANT USAGE ON SCHEMA churn TO churn_reader;
CREATE SCHEMA IF NOT EXISTS churn_admin;  -- owned by the superuser: no churn role can replace the function
REVOKE ALL ON SCHEMA churn_admin FROM PUBLIC;
CREATE OR REPLACE FUNCTION churn_admin.grant_served_views_to_reader() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cmd record;
BEGIN
    FOR cmd IN SELECT object_identity FROM pg_catalog.pg_event_trigger_ddl_commands()
               WHERE object_type = 'view' AND object_identity IN ('churn.scores_current', 'churn.scores_history')
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO churn_reader', cmd.object_identity);
    END LOOP;
END
$fn$;
DROP EVENT TRIGGER IF EXISTS churn_served_views_to_reader;
CREATE EVENT TRIGGER churn_served_views_to_reader ON ddl_command_end WHEN TAG IN ('CREATE VIEW')
    EXECUTE FUNCTION churn_admin.grant_served_views_to_reader();
SELECT format('GRANT SELECT ON %s TO churn_reader', v) FROM unnest(ARRAY['churn.scores_current',
    'churn.scores_history']) AS v WHERE to_regclass(v) IS NOT NULL \gexec
SQL
echo "init-churn-db: roles airflow, churn_owner, churn_publisher, churn_reader and databases airflow, churn ready"
