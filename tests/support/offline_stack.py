"""An AirflowStack whose servers do not exist (ports 1 and 2): for the launcher's files and processes, no run."""

from __future__ import annotations

from pathlib import Path

from churn.dev.stack import AirflowStack

SECRETS = ("pg-secret", "redis-secret")


def offline_stack(tmp: Path, **kwargs) -> AirflowStack:
    """A stack in ``tmp/state`` with the passwords of ``SECRETS`` in its URLs."""
    return AirflowStack(state_dir=tmp / "state", churn_pg_url=f"postgresql://postgres:{SECRETS[0]}@127.0.0.1:1/churn",
                        redis_url=f"redis://churn:{SECRETS[1]}@127.0.0.1:2/0",
                        metadata_url=f"postgresql+psycopg2://postgres:{SECRETS[0]}@127.0.0.1:1/af",
                        celery_broker_url=f"redis://churn:{SECRETS[1]}@127.0.0.1:2/1", **kwargs)
