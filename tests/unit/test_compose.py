"""docker-compose.yaml stays consistent with the code (no Docker engine here, so it is checked by reading it).

Same Airflow version as the pinned requirements, the official compose's services, the project's folders
mounted, the connection ids the code uses, and only ``CHURN_*`` variables that ``ChurnConfig`` knows.

Security (issue 26 items 9 and 14): no secret has a default, nothing with a password is published on a host
port, the serving Redis needs a login whose ACL excludes CONFIG/DEBUG/MODULE, healthchecks log in, and
the pipeline connects to Postgres as a least-privilege role created by docker/init-churn-db.sh. Where a
compose CLI exists (``docker compose`` or ``docker-compose``; only the client, no engine), ``config`` is run
to check the interpolation itself; elsewhere that one test is skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import yaml

from churn.config import ChurnConfig
from tests.support.airflow_env import REPO_ROOT

COMPOSE_TEXT = (REPO_ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
INIT_SCRIPT = REPO_ROOT / "docker" / "init-churn-db.sh"
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")


# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; `$${...}` is the container's
# own shell variable (escaped from compose), not an interpolation.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|FERNET|KEY|TOKEN|(?:^|_)AUTH$", re.I)
REQUIRED = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?[^}]+\}")


def _url(value: str):
    """urlsplit of a compose value, its interpolations replaced by their variable's name."""
    return urlsplit(INTERPOLATION.sub(lambda m: m["name"], value))


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _everything(node) -> list[str]:
    """Every string of a parsed YAML tree (keys, values, list items)."""
    if isinstance(node, dict):
        return [text for k, v in node.items() for text in (*_everything(k), *_everything(v))]
    if isinstance(node, list):
        return [text for item in node for text in _everything(item)]
    return [node] if isinstance(node, str) else []


# Every string of the parsed file, anchors resolved and comments left out: what compose interpolates.
COMPOSE_VALUES = "\n".join(_everything(COMPOSE))


def _pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(1)


def test_images_use_the_pinned_airflow_version():
    version = _pinned("apache-airflow")
    assert f"FROM apache/airflow:{version}-python3.11" in (REPO_ROOT / "Dockerfile").read_text()
    for name in (*AIRFLOW_SERVICES, "airflow-init", "dask-scheduler", "dask-worker"):
        assert SERVICES[name]["image"] == f"churn-platform-airflow:{version}", name


@pytest.mark.parametrize("name, command", [
    ("airflow-apiserver", "api-server"), ("airflow-scheduler", "scheduler"),
    ("airflow-dag-processor", "dag-processor"), ("airflow-triggerer", "triggerer"),
    ("airflow-worker", "celery worker"),
])
def test_airflow_components_mount_the_project(name, command):
    service = SERVICES[name]
    assert service["command"] == command
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert mounts["/opt/airflow/dags"] == "./dags" and mounts["/opt/airflow/plugins"] == "./plugins"
    assert mounts["/opt/airflow/include"] == "./include"
    assert service["environment"]["PYTHONPATH"] == "/opt/airflow/include"
    assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in service


def test_every_service_of_the_project_image_can_build_it():
    """Compose builds the image (no registry has it) with what its Python services import."""
    for name, service in SERVICES.items():
        if str(service.get("image", "")).startswith("churn-platform-airflow:"):
            assert service.get("build") == ".", f"{name} would try to pull the local-only image"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY requirements.txt /requirements.txt" in dockerfile
    assert re.search(r"^RUN pip install .*-r /requirements.txt", dockerfile, re.M)
    # churn-migrate and the tasks (psycopg2), Dask's scheduler and workers, the executor, the serving Redis client
    for package in ("psycopg2-binary", "distributed", "apache-airflow-providers-celery", "redis"):
        assert _pinned(package)


def test_connections_and_churn_variables_match_the_code():
    env = SERVICES["airflow-scheduler"]["environment"]
    cfg = ChurnConfig()
    for conn_id in (cfg.postgres_conn_id, cfg.redis_conn_id):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, conn_id
    assert _url(env[f"AIRFLOW_CONN_{cfg.redis_conn_id.upper()}"]).hostname == "churn-redis"
    assert _url(env[f"AIRFLOW_CONN_{cfg.postgres_conn_id.upper()}"]).path == "/churn"
    fields = {f"CHURN_{name.upper()}" for name in ChurnConfig.model_fields}
    unknown = sorted(k for k in env if k.startswith("CHURN_") and k not in fields)
    assert not unknown, f"compose sets CHURN_* variables ChurnConfig does not read: {unknown}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert env["CHURN_SYSTEMS"] == "production"  # connections only: never the dev launcher's state


def test_dask_workers_can_import_the_package():
    for name in ("dask-scheduler", "dask-worker"):
        service = SERVICES[name]
        assert "./include:/opt/airflow/include:ro" in service["volumes"]
        assert service["environment"]["PYTHONPATH"] == "/opt/airflow/include"


def test_churn_database_is_created_for_the_platform():
    init = INIT_SCRIPT.read_text()
    assert "CREATE DATABASE churn OWNER churn_owner" in init
    # A .sh (it reads the passwords from the environment; a .sql init file cannot), run by the image's entrypoint.
    mount = "./docker/init-churn-db.sh:/docker-entrypoint-initdb.d/10-init-churn-db.sh:ro"
    assert mount in SERVICES["postgres"]["volumes"]
    assert os.access(INIT_SCRIPT, os.X_OK)  # executed rather than sourced: its `set -e` cannot end the entrypoint


def test_compose_runs_the_topology_the_celery_tests_run():
    """CeleryExecutor with a broker apart from the serving Redis, several workers, Dask for TPOT, partitions."""
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker_host = _url(env["AIRFLOW__CELERY__BROKER_URL"]).hostname
    scores_host = _url(env["AIRFLOW_CONN_CHURN_REDIS"]).hostname
    assert broker_host != scores_host  # the broker never shares the score keyspace
    assert SERVICES["airflow-worker"]["deploy"]["replicas"] >= 2
    assert SERVICES["dask-worker"]["deploy"]["replicas"] >= 2
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert env["CHURN_SYSTEMS"] == "production"  # connections only: never the dev launcher's state
    assert "8786" in " ".join(SERVICES["dask-scheduler"]["command"])
    assert int(env["CHURN_SCORE_PARTITIONS"]) >= 2
    # the provider the executor comes from is pinned, as the local `make cluster` uses it
    assert _pinned("apache-airflow-providers-celery")


# --- secrets (issue 26 item 14) -------------------------------------------------------------------------------

# What the issue names: JWT secret, Fernet key, API secret key, the UI admin's password, a password per Postgres
# role, and the Redis passwords.
STACK_SECRETS = {"AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "_AIRFLOW_WWW_USER_PASSWORD",
                 "POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "CHURN_PG_OWNER_PASSWORD", "CHURN_PG_PUBLISHER_PASSWORD",
                 "CHURN_PG_READER_PASSWORD", "CELERY_BROKER_REDIS_PASSWORD", "CHURN_REDIS_PASSWORD",
                 "CHURN_REDIS_READER_PASSWORD"}
AIRFLOW_PROCESSES = (*AIRFLOW_SERVICES, "airflow-init")


def _secret_references() -> list[re.Match]:
    return [m for m in INTERPOLATION.finditer(COMPOSE_VALUES) if SECRET_NAME.search(m["name"])]


def test_no_secret_has_a_default():
    """Every reference to a secret is ``${NAME:?message}``: compose stops while it is unset or empty."""
    references = _secret_references()
    loose = sorted({m.group(0) for m in references if m["op"] != ":?" or not m["arg"].strip()})
    assert not loose, f"secrets with a default or that may be empty: {loose}"
    assert STACK_SECRETS <= {m["name"] for m in references}


def test_secret_settings_and_url_passwords_come_from_required_variables():
    """No literal secret anywhere: settings named like secrets, and every password inside a URL, are ``:?``."""
    authenticated = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                     "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW_CONN_CHURN_POSTGRES", "AIRFLOW_CONN_CHURN_REDIS",
                     "CHURN_POSTGRES_MIGRATION_URL"}
    seen = set()
    for name, service in SERVICES.items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED.fullmatch(value), f"{name}: {key}={value!r} is not a required variable"
            userinfo = re.match(r"^[\w+.-]+://(?P<user>[^:/@]*):(?P<password>.*)@[^@]*$", value)
            if userinfo:
                assert REQUIRED.fullmatch(userinfo["password"]), f"{name}: {key} has a literal password"
                seen.add(key)
    assert authenticated <= seen, f"connections without a password: {sorted(authenticated - seen)}"


def test_no_well_known_credentials():
    text = COMPOSE_TEXT.lower()
    for known in ("change-me", "changeme", "airflow:airflow", ":-airflow}", "fernet_key: ''", 'fernet_key: ""'):
        assert known not in text, known
    init_env = _env(SERVICES["airflow-init"])
    assert REQUIRED.fullmatch(init_env["_AIRFLOW_WWW_USER_PASSWORD"])


def test_env_example_lists_every_secret_empty_with_the_command_that_makes_it():
    example = (REPO_ROOT / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", example, re.M))
    required = {m["name"] for m in INTERPOLATION.finditer(COMPOSE_VALUES) if m["op"] == ":?"}
    assert required <= set(values), f"missing from .env.example: {sorted(required - set(values))}"
    lines = example.splitlines()
    commands = set()
    for name in sorted(required):
        assert values[name] == "", f"{name} has a value in .env.example: a copied example must not start a stack"
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
        section = lines[max(i for i, line in enumerate(lines[:at]) if line.startswith("# ---") or i == 0):at]
        command = [re.search(r'python3 -c "[^"]+"', line) for line in section]
        assert any(command), f"no command to generate {name} above it in .env.example"
        commands.add([c for c in command if c][-1].group(0))
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    # The commands work and give what the stack accepts: a Fernet key, URL-safe passwords.
    from cryptography.fernet import Fernet

    for command in commands:
        out = subprocess.run([sys.executable, "-c", command[len('python3 -c "'):-1]], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
        assert re.fullmatch(r"[A-Za-z0-9_=-]{24,}", out), command
        if "urandom(32)" in command:
            Fernet(out.encode())


# --- what is reachable (items 9, 14) -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["postgres", "redis", "churn-redis"])
def test_data_stores_are_not_published_on_host_ports(name):
    assert "ports" not in SERVICES[name], f"{name} is published on a host port"


def test_only_the_ui_is_published_beyond_loopback():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            if name != "airflow-apiserver":  # the UI and API: they require a login
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def _redis_users(command: list) -> dict[str, list[str]]:
    """``--user NAME rule ...`` directives of a redis-server command line: {name: rules}."""
    args = [str(arg) for arg in command]
    users = {}
    for i, arg in enumerate(args):
        if arg == "--user":
            rules = []
            for rule in args[i + 1:]:
                if rule.startswith("--"):
                    break
                rules.append(rule)
            users[rules[0]] = rules[1:]
    return users


# The commands that let a client write files as the server (CONFIG SET dir/dbfilename), load code (MODULE) or
# crash it (DEBUG), with their ACL categories in Redis 7.2 (COMMAND DOCS / ACL CAT).
FORBIDDEN_REDIS = {"config": {"@admin", "@slow", "@dangerous"}, "debug": {"@admin", "@slow", "@dangerous"},
                   "module": {"@admin", "@slow", "@dangerous"}}


def _allowed(rules: list[str], command: str, categories: set[str]) -> bool:
    """Whether ACL ``rules`` (applied left to right, as Redis does) leave ``command`` or a subcommand of it allowed."""
    allowed = False
    for rule in (r.lower() for r in rules):
        if rule in ("+@all", "allcommands"):
            allowed = True
        elif rule in ("-@all", "nocommands", "reset"):
            allowed = False
        elif rule[:2] in ("+@", "-@") and rule[1:] in categories:
            allowed = rule[0] == "+"
        elif rule[:1] in "+-" and rule[1:].split("|")[0] == command:
            allowed = rule[0] == "+" or (allowed and "|" in rule)  # +config|get re-opens part of it
    return allowed


def test_serving_redis_requires_a_login_whose_acl_excludes_config_debug_module():
    service = SERVICES["churn-redis"]
    users = _redis_users(service["command"])
    assert "off" in users["default"] and "nopass" not in users["default"], "the default user must be disabled"
    for user, password_var in (("churn", "CHURN_REDIS_PASSWORD"), ("churn-reader", "CHURN_REDIS_READER_PASSWORD")):
        rules = users[user]
        assert "nopass" not in rules
        passwords = [rule[1:] for rule in rules if rule.startswith(">")]
        assert [REQUIRED.fullmatch(p)["name"] for p in passwords] == [password_var], rules
        for command, categories in FORBIDDEN_REDIS.items():
            assert not _allowed(rules, command, categories), f"{user} may run {command.upper()}"
    reader = users["churn-reader"]
    assert not _allowed(reader, "set", {"@write", "@string", "@slow"}), "front-ends must not write"
    # The platform logs in as `churn`, with the password the server was given.
    url = _url(COMPOSE["x-airflow-common"]["environment"]["AIRFLOW_CONN_CHURN_REDIS"])
    assert (url.username, url.password) == ("churn", "CHURN_REDIS_PASSWORD")


def test_celery_broker_requires_a_password():
    command = [str(arg) for arg in SERVICES["redis"]["command"]]
    assert REQUIRED.fullmatch(command[command.index("--requirepass") + 1])["name"] == "CELERY_BROKER_REDIS_PASSWORD"
    url = _url(COMPOSE["x-airflow-common"]["environment"]["AIRFLOW__CELERY__BROKER_URL"])
    assert url.password == "CELERY_BROKER_REDIS_PASSWORD"


def test_healthchecks_log_in():
    for name in ("redis", "churn-redis"):
        service = SERVICES[name]
        test = " ".join(service["healthcheck"]["test"])
        assert "redis-cli" in test and "grep -q PONG" in test, f"{name}: an error reply (NOAUTH) must be unhealthy"
        assert REQUIRED.fullmatch(_env(service)["REDISCLI_AUTH"]), f"{name}: redis-cli has no password"
    assert "--user churn" in " ".join(SERVICES["churn-redis"]["healthcheck"]["test"])
    postgres = SERVICES["postgres"]
    test = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" not in test  # it answers without logging in
    assert "-h 127.0.0.1" in test and "-w" in test.split()  # over TCP (not trust), never prompting
    env = _env(postgres)
    for role, variable in (("airflow", "AIRFLOW_DB_PASSWORD"), ("churn_publisher", "CHURN_PG_PUBLISHER_PASSWORD")):
        assert f'PGPASSWORD="$${{{variable}}}" psql -w -X -h 127.0.0.1 -U {role}' in test
        assert REQUIRED.fullmatch(env[variable])
    assert "--auth-local=scram-sha-256" in env["POSTGRES_INITDB_ARGS"]


# --- Postgres roles (item 9) ---------------------------------------------------------------------------------

def _references(variable: str) -> set[str]:
    """Services whose definition interpolates ``variable``."""
    return {name for name, service in SERVICES.items()
            if any(f"${{{variable}:" in text for text in _everything(service))}


def test_pipeline_connects_as_the_publisher_never_as_the_superuser():
    postgres_env = _env(SERVICES["postgres"])
    superuser = postgres_env.get("POSTGRES_USER", "postgres")
    common = COMPOSE["x-airflow-common"]["environment"]
    metadata = _url(common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    churn = _url(common["AIRFLOW_CONN_CHURN_POSTGRES"])
    migration = _url(_env(SERVICES["churn-migrate"])["CHURN_POSTGRES_MIGRATION_URL"])
    assert churn.username == "churn_publisher" and churn.path == "/churn"
    assert migration.username == "churn_owner" and migration.path == "/churn"
    assert metadata.username == "airflow" and metadata.path == "/airflow"
    assert len({superuser, metadata.username, churn.username, migration.username, "churn_reader"}) == 5
    # Each password reaches only the services that log in with it.
    airflow = set(AIRFLOW_PROCESSES)
    assert _references("POSTGRES_PASSWORD") == {"postgres"}
    assert _references("CHURN_PG_OWNER_PASSWORD") == {"postgres", "churn-migrate"}
    assert _references("CHURN_PG_READER_PASSWORD") == {"postgres"}
    assert _references("CHURN_PG_PUBLISHER_PASSWORD") == {"postgres", *airflow}
    assert _references("AIRFLOW_DB_PASSWORD") == {"postgres", *airflow}
    for name in ("dask-scheduler", "dask-worker"):
        assert not [m for m in INTERPOLATION.finditer(yaml.safe_dump(SERVICES[name])) if SECRET_NAME.search(m["name"])]
    # The reader role is the init script's: managing it from the pipeline would need CREATEROLE.
    assert common["CHURN_PG_READER_ROLE"] == ""


def test_the_schema_is_migrated_by_its_owner_before_airflow_starts():
    migrate = SERVICES["churn-migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "./docker/churn_migrate.py:/opt/airflow/docker/churn_migrate.py:ro" in migrate["volumes"]
    assert migrate["command"] == ["python", "/opt/airflow/docker/churn_migrate.py"]
    for name in AIRFLOW_PROCESSES:
        assert SERVICES[name]["depends_on"]["churn-migrate"]["condition"] == "service_completed_successfully", name
    script = (REPO_ROOT / "docker" / "churn_migrate.py").read_text()
    assert "migrate(conn, publisher=" in script and "CHURN_POSTGRES_MIGRATION_URL" in script


def _init_sql() -> tuple[str, str]:
    """The init script's SQL (comments left out) without its function bodies, and the bodies."""
    text = INIT_SCRIPT.read_text()
    sql = re.sub(r"--[^\n]*", "", text[text.index("<<'SQL'") + len("<<'SQL'"):text.rindex("\nSQL\n")])
    bodies = "".join(re.findall(r"\$fn\$.*?\$fn\$", sql, re.S))
    return re.sub(r"\$fn\$.*?\$fn\$", "", sql, flags=re.S), bodies


def _grants(sql: str) -> list[tuple[set[str], str, str]]:
    """(privileges, object, grantee) of every GRANT, including those of ALTER DEFAULT PRIVILEGES."""
    # Quoted text left out: a GRANT built inside a string is checked on its own (the served views only).
    statements = [" ".join(s.split()) for s in re.sub(r"'[^']*'", "''", sql).split(";")]
    found = []
    for statement in statements:
        default_schema = re.match(r"ALTER DEFAULT PRIVILEGES .*?IN SCHEMA (\w+) GRANT", statement)
        for m in re.finditer(r"\bGRANT (?P<privs>[A-Z ,]+?)(?: ON (?P<obj>.+?))? TO (?P<to>\w+)", statement):
            obj = m["obj"] or ""
            if default_schema:
                obj = f"{obj} IN SCHEMA {default_schema[1]}"  # e.g. "TABLES IN SCHEMA churn"
            found.append(({p.strip() for p in m["privs"].split(",")}, obj, m["to"]))
    return found


def test_init_script_creates_the_roles_with_least_privilege():
    from churn.publish.postgres import READER_VIEWS

    script = INIT_SCRIPT.read_text()
    sql, bodies = _init_sql()
    postgres_env = _env(SERVICES["postgres"])
    # Four login roles, none with a power beyond logging in; each password from a required variable.
    for role in ("airflow", "churn_owner", "churn_publisher", "churn_reader"):
        alter = re.search(rf"ALTER ROLE {role} LOGIN ([^;]+);", sql)
        assert alter, role
        for attribute in ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS"):
            assert attribute in alter[1], f"{role} lacks {attribute}"
        variable = re.search(r"PASSWORD :'(\w+)'", alter[1])[1]
        env_name = re.search(rf'-v {variable}="\$(\w+)"', script)[1]
        assert REQUIRED.fullmatch(postgres_env[env_name]), env_name
        assert f': "${{{env_name}:?' in script  # the script itself refuses to run without it
    for power in re.findall(r"\b(?:NO)?(?:SUPERUSER|CREATEDB|CREATEROLE|REPLICATION|BYPASSRLS)\b", sql):
        assert power.startswith("NO"), f"a role is given {power}"
    assert "CREATE DATABASE churn OWNER churn_owner" in sql and "CREATE DATABASE airflow OWNER airflow" in sql
    assert "REVOKE ALL ON DATABASE churn FROM PUBLIC" in sql and "REVOKE ALL ON DATABASE airflow FROM PUBLIC" in sql
    assert "CREATE SCHEMA IF NOT EXISTS churn AUTHORIZATION churn_owner" in sql

    grants = _grants(sql)
    assert not [g for g in grants if not g[1]], f"role memberships granted: {[g for g in grants if not g[1]]}"
    by_role: dict[str, list[tuple[set[str], str]]] = {}
    for privileges, obj, grantee in grants:
        by_role.setdefault(grantee, []).append((privileges, obj))
    assert set(by_role) == {"churn_publisher", "churn_reader"}, "only the churn roles get grants"
    # Publisher: data manipulation on the owner's tables (no TRUNCATE, REFERENCES, TRIGGER or ALL), the
    # schema's CREATE for its per-run tables and views, and what its tasks need on the database.
    for privileges, obj in by_role["churn_publisher"]:
        if "TABLES" in obj:
            allowed = {"SELECT", "INSERT", "UPDATE", "DELETE"} if "SCHEMA churn" in obj else {"SELECT"}
            assert privileges <= allowed, (privileges, obj)
        elif "SEQUENCES" in obj:
            assert privileges <= {"USAGE", "SELECT", "UPDATE"}
        elif obj.startswith("SCHEMA"):
            assert privileges <= ({"USAGE", "CREATE"} if obj == "SCHEMA churn" else {"USAGE"}), (privileges, obj)
        else:
            assert obj == "DATABASE churn" and privileges <= {"CONNECT", "TEMPORARY", "CREATE"}, (privileges, obj)
    # Reader: connect, look into schema churn, and SELECT on the served views only (granted when they appear).
    assert sorted((sorted(p), o) for p, o in by_role["churn_reader"]) == [(["CONNECT"], "DATABASE churn"),
                                                                        (["USAGE"], "SCHEMA churn")]
    assert "GRANT SELECT ON %s TO churn_reader" in bodies
    assert sql.count("TO churn_reader'") == 1  # the re-run's grant on views that exist already
    served = {f"churn.{view}" for view in READER_VIEWS}  # what the publisher serves (churn.publish.postgres)
    assert set(re.findall(r"'(churn\.\w+)'", bodies)) == set(re.findall(r"'(churn\.\w+)'", sql)) == served
    assert "WHEN TAG IN ('CREATE VIEW')" in sql and "SECURITY DEFINER" not in bodies
    assert "ALTER ROLE churn_reader SET default_transaction_read_only = on" in sql
    assert "ALTER ROLE churn_reader SET idle_in_transaction_session_timeout" in sql


# --- the compose CLI, where there is one ---------------------------------------------------------------------

def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``; ``config`` needs neither an engine nor a network."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_refuses_to_run_without_the_secrets_and_accepts_them(tmp_path):
    cli = _compose_cli()
    if cli is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no compose CLI in CI: .ci/run installs Debian's docker-compose for this check")
        pytest.skip("no compose CLI here (docker compose / docker-compose): interpolation is checked by reading only")
    names = {m["name"] for m in INTERPOLATION.finditer(COMPOSE_VALUES)}
    # Variables of the calling shell win over the env file: none of the stack's may leak into this check.
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("COMPOSE_", "DOCKER_"))}

    def config(env_file):
        return subprocess.run([*cli, "--env-file", str(env_file), "-f", str(REPO_ROOT / "docker-compose.yaml"),
                               "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    (tmp_path / "empty.env").write_text("")
    refused = config(tmp_path / "empty.env")
    assert refused.returncode != 0 and "in .env (see .env.example)" in refused.stdout + refused.stderr
    assert config(REPO_ROOT / ".env.example").returncode != 0  # copied unchanged, it starts nothing

    values = {name: secrets.token_urlsafe(24) for name in sorted(names)
              if re.search(rf"\$\{{{name}:\?", COMPOSE_VALUES)}
    (tmp_path / "filled.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    accepted = config(tmp_path / "filled.env")
    assert accepted.returncode == 0, accepted.stderr
    resolved = yaml.safe_load(accepted.stdout)["services"]
    scheduler = resolved["airflow-scheduler"]["environment"]
    assert urlsplit(scheduler["AIRFLOW_CONN_CHURN_POSTGRES"]).password == values["CHURN_PG_PUBLISHER_PASSWORD"]
    assert scheduler["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    assert f">{values['CHURN_REDIS_PASSWORD']}" in [str(a) for a in resolved["churn-redis"]["command"]]
    assert "ports" not in resolved["churn-redis"] and "change-me" not in accepted.stdout


def test_the_publisher_may_not_create_schemas_in_the_platform_database():
    """Tasks run no DDL outside schema churn once it is migrated (churn.db.SCHEMA_VERSION): no CREATE on the database."""
    sql, _ = _init_sql()
    grants = [g for g in re.findall(r"GRANT\s+([^;]*?)\s+ON\s+DATABASE\s+churn\s+TO\s+([^;]+);", sql, re.I)]
    publisher = [privileges for privileges, roles in grants if "churn_publisher" in roles]
    assert publisher and not any(re.search(r"\bCREATE\b", p, re.I) for p in publisher), publisher
