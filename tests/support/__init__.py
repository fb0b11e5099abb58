"""Helpers shared by the test tiers (no test module imports another; shared code lives here or in conftest.py).

``servers`` starts the embedded Postgres/Valkey (only the server tiers' conftest files import its fixtures);
the other modules are plain helpers and data generators.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
