"""SQL source (CHURN_SOURCE=sql): the feature query file itself, before any database is involved.

Extraction and the leakage check on a team's database are in tests/integration/test_data_sql_source.py,
the nightly run on it in tests/e2e/test_data_sql_source.py.
"""

from __future__ import annotations

import pytest

from churn.data.sql_source import SqlSourceError, load_query
from tests.support.crm import CORRECT_QUERY, write_query


def test_a_query_file_must_use_as_of_and_only_the_known_parameters(tmp_path):
    with pytest.raises(SqlSourceError, match="does not use %\\(as_of\\)s"):
        load_query(write_query(tmp_path, "SELECT 1 AS acct_no"))
    with pytest.raises(SqlSourceError, match=r"unknown parameter\(s\) \['region'\]"):
        load_query(write_query(tmp_path, "SELECT 1 WHERE %(as_of)s < now() AND %(region)s = 'x'"))
    with pytest.raises(SqlSourceError, match="cannot read the feature query"):
        load_query(tmp_path / "missing.sql")
    assert load_query(write_query(tmp_path, CORRECT_QUERY)).endswith("< %(as_of)s::date)")  # trailing ; dropped
