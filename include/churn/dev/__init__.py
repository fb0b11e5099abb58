"""Development and demo tooling, not the runtime: nothing the DAG's tasks run imports this package.

:mod:`churn.dev.services` starts the embedded PostgreSQL and Redis (``make services``, the test
suite, the benchmarks); :mod:`churn.dev.stack` starts Airflow's components on this machine and
triggers runs through the REST API (``make demo``, ``make cluster``). In production, Airflow and
the databases are run by the platform (``docker-compose.yaml`` or your own deployment).
"""
