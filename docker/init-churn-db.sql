-- Second database on the compose Postgres: the platform's data (sources, scores, registry).
CREATE DATABASE churn;
