"""Bad-input corpus: every kind gets a clear error or a quarantine, through the real ingest and validate stages.

Integration tier: the stages run against a real Postgres (quarantine, validation results).
The last test publishes a batch first and proves a broken batch leaves the served scores
(``churn.scores_current`` and ``churn:score:*`` in Redis) exactly as they were.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn.stages import common as common_stages, data as data_stages
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data import sources
from churn.data.sources import FileSourceError
from churn.data.validate import ValidationFailed
from tests.support.bad_inputs.corpus import TELCO_ENV, USUAL_ROWS, clean_frame, write_big, write_corpus

RUN_DATE = date(2026, 11, 20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("bad_inputs"))


def make_cfg(tmp_path: Path, path: Path, **extra: str) -> ChurnConfig:
    env = {**TELCO_ENV, "CHURN_FILE_PATH": str(path), "CHURN_STATE_DIR": str(tmp_path / "state"), **extra}
    return ChurnConfig.from_env(env)


def run_data_stages(cfg: ChurnConfig, pg_url: str, redis_url: str, as_of: date = RUN_DATE) -> tuple[dict, dict]:
    """start_run -> ingest -> profile_and_validate, as the DAG calls them."""
    res = Resources.from_urls(pg_url, redis_url)
    run = common_stages.start_run(cfg, res, as_of, f"test-{as_of}")
    ingested = data_stages.ingest(cfg, res, run)
    return run, data_stages.profile_and_validate(cfg, res, run, ingested)


def quarantined(pg_conn, dataset: str = "train") -> dict[str | None, list[str]]:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT customer_id, reasons FROM churn.quarantine WHERE dataset = %s ORDER BY row_number",
                    (dataset,))
        rows = cur.fetchall()
    pg_conn.commit()
    return {cid: reasons for cid, reasons in rows}


# --- file-level problems: a clear error before anything is written --------------------------------


def test_empty_file_is_a_clear_error(corpus, tmp_path, fresh_pg_url, redis_url):
    with pytest.raises(FileSourceError, match=r"is empty \(0 bytes\)"):
        run_data_stages(make_cfg(tmp_path, corpus["empty"]), fresh_pg_url, redis_url)


def test_header_only_stops_the_run_at_the_row_count_check(corpus, tmp_path, fresh_pg_url, redis_url, pg_conn):
    with pytest.raises(ValidationFailed, match=r"failed batch checks.*expect_table_row_count_to_be_between"):
        run_data_stages(make_cfg(tmp_path, corpus["header_only"]), fresh_pg_url, redis_url)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT success, rows_checked FROM churn.validation_results WHERE dataset = 'train'")
        assert cur.fetchone() == (False, 0)


def test_missing_required_column_names_it(corpus, tmp_path, fresh_pg_url, redis_url):
    with pytest.raises(FileSourceError, match=r"lacks required column\(s\) \['MonthlyCharges'\]"):
        run_data_stages(make_cfg(tmp_path, corpus["missing_column"]), fresh_pg_url, redis_url)


def test_extra_columns_are_ignored_and_reported(corpus, tmp_path, fresh_pg_url, redis_url, pg_conn):
    cfg = make_cfg(tmp_path, corpus["extra_columns"])
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = common_stages.start_run(cfg, res, RUN_DATE, "t")
    ingested = data_stages.ingest(cfg, res, run)
    assert ingested["train"]["ignored_columns"] == ["loyalty_tier", "notes"]
    assert "loyalty_tier" not in pd.read_parquet(ingested["train"]["path"]).columns
    validated = data_stages.profile_and_validate(cfg, res, run, ingested)
    assert validated["train"]["success"] and validated["train"]["rows_quarantined"] == 0


def test_an_unset_delimiter_is_detected_and_the_log_names_the_setting(corpus, tmp_path, fresh_pg_url, redis_url,
                                                                        caplog):
    with caplog.at_level("WARNING", logger="churn.data.infer"):
        _, validated = run_data_stages(make_cfg(tmp_path, corpus["wrong_delimiter"]), fresh_pg_url, redis_url)
    assert "CHURN_FILE_DELIMITER=';'" in caplog.text
    assert validated["train"]["rows_checked"] == USUAL_ROWS and validated["train"]["rows_quarantined"] == 0
    # A delimiter the user pinned wins over detection: the wrong one gives the error naming the setting.
    with pytest.raises(FileSourceError, match=r"CHURN_FILE_DELIMITER=';'"):
        run_data_stages(make_cfg(tmp_path, corpus["wrong_delimiter"], CHURN_FILE_DELIMITER=","), fresh_pg_url,
                        redis_url)


def test_non_utf8_bytes_name_the_encoding_setting(corpus, tmp_path, fresh_pg_url, redis_url, pg_conn):
    with pytest.raises(FileSourceError, match=r"not valid UTF-8.*CHURN_FILE_ENCODING"):
        run_data_stages(make_cfg(tmp_path, corpus["non_utf8"]), fresh_pg_url, redis_url)
    # Read with the right encoding, the odd value is just an unknown category: quarantined.
    _, validated = run_data_stages(make_cfg(tmp_path, corpus["non_utf8"], CHURN_FILE_ENCODING="latin-1"),
                                   fresh_pg_url, redis_url)
    assert validated["train"]["rows_quarantined"] == 1
    assert quarantined(pg_conn)["C000005"] == ["expect_column_values_to_be_in_set(gender)"]


def test_bom_is_accepted(corpus, tmp_path, fresh_pg_url, redis_url):
    run, validated = run_data_stages(make_cfg(tmp_path, corpus["bom"]), fresh_pg_url, redis_url)
    assert validated["train"]["success"] and validated["train"]["rows_quarantined"] == 0
    ids = pd.read_parquet(validated["score"]["clean_path"])["customerID"]
    assert "C000000" in set(ids) and not ids.str.startswith("\ufeff").any()  # the BOM is not part of an id


# --- row-level problems: quarantined with the reason and the run key, the run goes on ----------------


def test_numbers_as_text_blanks_are_missing_and_garbage_is_quarantined(corpus, tmp_path, fresh_pg_url, redis_url,
                                                                       pg_conn):
    run, validated = run_data_stages(make_cfg(tmp_path, corpus["numbers_as_text"]), fresh_pg_url, redis_url)
    bad = quarantined(pg_conn)
    assert set(bad) == {"C000003", "C000004"}
    assert bad["C000003"] == ["unparseable: TotalCharges: 'abc' is not a number"]
    # the cell became null, so the suite's not-null check on MonthlyCharges fires as well
    assert bad["C000004"][0] == "unparseable: MonthlyCharges: '1,234.5' is not a number"
    clean = pd.read_parquet(validated["train"]["clean_path"]).set_index("customerID")
    assert clean.loc[["C000001", "C000002"], "TotalCharges"].isna().all()  # blanks kept as missing values
    assert clean["MonthlyCharges"].dtype == np.float64 and clean["MonthlyCharges"].notna().all()
    with pg_conn.cursor() as cur:
        cur.execute("SELECT DISTINCT run_key FROM churn.quarantine")
        assert cur.fetchall() == [(run["run_key"],)]


@pytest.mark.parametrize("kind, ids, reason", [
    ("negative_tenure", {"C000007", "C000008"}, "expect_column_values_to_be_between(tenure)"),
    ("unknown_category", {"C000009"}, "expect_column_values_to_be_in_set(Contract)"),
    ("duplicate_ids", {"C000010"}, "expect_column_values_to_be_unique(customerID)"),
    ("null_ids", {None}, "expect_column_values_to_not_be_null(customerID)"),
])
def test_row_problems_are_quarantined_with_reason(kind, ids, reason, corpus, tmp_path, fresh_pg_url, redis_url,
                                                  pg_conn):
    _, validated = run_data_stages(make_cfg(tmp_path, corpus[kind]), fresh_pg_url, redis_url)
    for dataset in ("train", "score"):
        bad = quarantined(pg_conn, dataset)
        assert set(bad) == ids, dataset
        assert all(reason in reasons for reasons in bad.values())
    expected_rows = {"duplicate_ids": 2, "null_ids": 2, "negative_tenure": 2}.get(kind, 1)
    assert validated["train"]["rows_quarantined"] == expected_rows
    clean = pd.read_parquet(validated["train"]["clean_path"])
    assert len(clean) == USUAL_ROWS - expected_rows and clean["customerID"].is_unique
    assert clean["customerID"].notna().all()


def test_label_outside_allowed_set_is_quarantined_in_training_only(corpus, tmp_path, fresh_pg_url, redis_url,
                                                                   pg_conn):
    _, validated = run_data_stages(make_cfg(tmp_path, corpus["label_outside_set"]), fresh_pg_url, redis_url)
    bad = quarantined(pg_conn, "train")
    assert set(bad) == {"C000014", "C000015"}
    assert "expect_column_values_to_be_in_set(Churn)" in bad["C000014"]
    assert "expect_column_values_to_not_be_null(Churn)" in bad["C000015"]
    assert quarantined(pg_conn, "score") == {}  # scoring does not need a label
    clean = pd.read_parquet(validated["train"]["clean_path"])
    assert sorted(clean["Churn"].unique()) == [0, 1]


def test_too_many_bad_rows_stop_the_run(corpus, tmp_path, fresh_pg_url, redis_url, pg_conn):
    with pytest.raises(ValidationFailed, match=r"above CHURN_MAX_BAD_ROW_FRACTION=0.05"):
        run_data_stages(make_cfg(tmp_path, corpus["too_many_bad_rows"]), fresh_pg_url, redis_url)
    assert len(quarantined(pg_conn)) == USUAL_ROWS // 4 + 1  # the rows are still kept for inspection


# --- batch checks with run-time bounds ------------------------------------------------------------


def test_row_count_collapse_against_previous_run_stops_the_run(tmp_path, fresh_pg_url, redis_url):
    day1, day2 = tmp_path / "day1.csv", tmp_path / "day2.csv"
    clean_frame(400).to_csv(day1, index=False)
    clean_frame(150).to_csv(day2, index=False)  # above the suite's floor of 100, but 62% fewer rows than yesterday
    _, first = run_data_stages(make_cfg(tmp_path, day1), fresh_pg_url, redis_url, RUN_DATE - timedelta(days=1))
    assert first["train"]["success"] and first["train"]["previous_rows"] is None
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between.*observed_value=150"):
        run_data_stages(make_cfg(tmp_path, day2), fresh_pg_url, redis_url)
    # a smaller change stays within CHURN_MAX_ROW_COUNT_CHANGE
    _, relaxed = run_data_stages(make_cfg(tmp_path, day2, CHURN_MAX_ROW_COUNT_CHANGE="0.7"), fresh_pg_url, redis_url)
    assert relaxed["train"]["success"] and relaxed["train"]["previous_rows"] == 400


def test_stale_data_stops_the_run_when_a_timestamp_exists(tmp_path, fresh_pg_url, redis_url):
    stale, fresh = tmp_path / "stale.csv", tmp_path / "fresh.csv"
    frame = clean_frame()
    frame.assign(updated_at=(datetime(2026, 11, 1, tzinfo=timezone.utc)).isoformat()).to_csv(stale, index=False)
    frame.assign(updated_at=(datetime(2026, 11, 19, 23, tzinfo=timezone.utc)).isoformat()).to_csv(fresh, index=False)
    with pytest.raises(ValidationFailed, match=r"expect_column_max_to_be_between\(updated_at\)"):
        run_data_stages(make_cfg(tmp_path, stale, CHURN_TIMESTAMP_COLUMN="updated_at"), fresh_pg_url, redis_url)
    _, ok = run_data_stages(make_cfg(tmp_path, fresh, CHURN_TIMESTAMP_COLUMN="updated_at"), fresh_pg_url,
                            redis_url)
    assert ok["train"]["success"]


# --- size: 1,000x the usual file, read with bounded memory ---------------------------------------------


def test_file_1000x_the_usual_size_is_read_in_bounded_chunks(tmp_path, monkeypatch):
    big = tmp_path / "big.csv"
    rows = write_big(big, factor=1000)
    assert rows == 1000 * USUAL_ROWS
    seen: list[int] = []
    real = sources.coerce_chunk

    def spy(frame, spec, labelled, **conventions):  # records how many rows each conversion step holds
        seen.append(len(frame))
        return real(frame, spec, labelled, **conventions)

    monkeypatch.setattr(sources, "coerce_chunk", spy)
    cfg = make_cfg(tmp_path, big, CHURN_INGEST_CHUNK_ROWS="5000")
    from churn.data.spec import spec_from_config

    snap = sources.read_file_snapshot(spec_from_config(cfg), [big], tmp_path / "big.parquet", RUN_DATE,
                                      labelled=True, chunk_rows=cfg.ingest_chunk_rows)
    assert snap.rows == rows and sum(seen) == rows
    assert max(seen) <= 5000 and snap.max_chunk_rows == max(seen)
    assert len(seen) >= rows // 5000
    parquet = pq.ParquetFile(snap.path)
    assert parquet.metadata.num_rows == rows and max(
        parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)) <= 5000


# --- a broken batch leaves the served scores untouched ----------------------------------------------


def _served_state(pg_url: str, client) -> tuple[list, dict]:
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM churn.scores_current ORDER BY customer_id")
        rows = cur.fetchall()
    conn.close()
    redis_state = {key: client.dump(key) for key in client.scan_iter("churn:*")}
    return rows, redis_state


def test_broken_batch_leaves_served_scores_untouched(corpus, tmp_path, fresh_pg_url, redis_client, redis_url):
    from churn.publish import postgres as pg_publish
    from churn.publish import redis_store

    ids = clean_frame()["customerID"]
    rng = np.random.default_rng(0)
    proba = rng.uniform(0, 1, len(ids)).astype(np.float32)
    scores = pa.table({
        "customer_id": pa.array(ids.tolist(), pa.string()),
        "churn_probability": pa.array(proba, pa.float32()),
        "risk_band": pa.array(np.where(proba < 0.3, "low", np.where(proba < 0.6, "medium", "high")).tolist()),
        "risk_decile": pa.array(np.ceil(pd.Series(proba).rank(method="first") * 10 / len(proba)).astype(np.int16)),
        "model_version": pa.array(["2026-11-19-logistic_baseline"] * len(ids)),
        "run_id": pa.array(["2026-11-19"] * len(ids)),
        "scored_at": pa.array([datetime(2026, 11, 19, 2, tzinfo=timezone.utc)] * len(ids), pa.timestamp("us", "UTC")),
    })
    scores_path = tmp_path / "scores.parquet"
    pq.write_table(scores, scores_path)
    conn = psycopg2.connect(fresh_pg_url)
    pg_publish.publish_scores(conn, scores_path, "2026-11-19", "2026-11-19-logistic_baseline")
    conn.close()
    redis_store.publish_scores(redis_client, scores_path, "2026-11-19", "2026-11-19-logistic_baseline")
    before = _served_state(fresh_pg_url, redis_client)
    assert len(before[0]) == USUAL_ROWS and len(before[1]) > USUAL_ROWS

    # Tonight's export is broken in three ways, one after the other; each run stops in the data stages.
    for kind, error in (("header_only", ValidationFailed), ("missing_column", FileSourceError),
                        ("too_many_bad_rows", ValidationFailed)):
        with pytest.raises(error):
            run_data_stages(make_cfg(tmp_path, corpus[kind]), fresh_pg_url, redis_url)
        assert _served_state(fresh_pg_url, redis_client) == before, kind


def test_chunked_validation_equals_whole_batch_validation(tmp_path, fresh_pg_url, redis_url, pg_conn):
    """Validation reads the snapshot in chunks; what it quarantines and keeps must not depend on the chunk size.

    Problems sit in different chunks of 30 rows, and one id repeats across two chunks (rows 10 and 170),
    which no single chunk's GX check can see.
    """
    from tests.support.bad_inputs.corpus import clean_frame

    frame = clean_frame()
    frame.loc[170, "customerID"] = frame.loc[10, "customerID"]   # duplicate across chunks 0 and 5
    frame.loc[[40, 41], "customerID"] = frame.loc[42, "customerID"]  # duplicate within chunk 1
    frame.loc[80, "tenure"] = "-3"
    frame.loc[125, "Contract"] = "Three year"
    frame.loc[199, "customerID"] = ""
    frame.loc[150, "TotalCharges"] = "abc"
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    outcomes = {}
    for chunk in (30, 100_000):
        cfg = make_cfg(tmp_path / f"c{chunk}", path, CHURN_INGEST_CHUNK_ROWS=str(chunk))
        run, validated = run_data_stages(cfg, fresh_pg_url, redis_url)
        with pg_conn.cursor() as cur:
            cur.execute("SELECT dataset, row_number, customer_id, reasons FROM churn.quarantine "
                        "ORDER BY dataset, row_number")
            rows = cur.fetchall()
            cur.execute("SELECT dataset, rows_checked, rows_quarantined, success FROM churn.validation_results "
                        "ORDER BY dataset")
            results = cur.fetchall()
        pg_conn.commit()
        clean = pd.read_parquet(validated["train"]["clean_path"])
        outcomes[chunk] = {"quarantine": rows, "results": results, "clean": clean,
                           "failures": validated["train"]["row_failures"]}
    small, whole = outcomes[30], outcomes[100_000]
    assert small["quarantine"] == whole["quarantine"]
    train_bad = {r[2] for r in small["quarantine"] if r[0] == "train"}
    assert {frame.loc[10, "customerID"], frame.loc[42, "customerID"], None} <= train_bad
    assert small["results"] == whole["results"] and small["results"][1][2] == 9  # 2+3 dupes, 4 bad rows
    assert small["failures"] == whole["failures"]
    pd.testing.assert_frame_equal(small["clean"], whole["clean"])
    assert len(small["clean"]) == 200 - 9 and small["clean"]["customerID"].is_unique


def test_a_regional_gzip_export_runs_through_ingest_and_validation_by_configuration(tmp_path, fresh_pg_url, redis_url,
                                                                                    pg_conn):
    import gzip

    from tests.support.bad_inputs.corpus import clean_frame

    frame = clean_frame()
    for column in ("MonthlyCharges", "TotalCharges"):
        frame[column] = [f"{float(v):,.2f}".replace(",", "_").replace(".", ",").replace("_", ".") for v in frame[column]]
    path = tmp_path / "kunden_2026-11-20.csv.gz"
    path.write_bytes(gzip.compress(frame.to_csv(index=False, sep=";").encode("cp1252")))
    cfg = make_cfg(tmp_path, path, CHURN_FILE_DELIMITER=";", CHURN_FILE_DECIMAL=",", CHURN_FILE_THOUSANDS=".",
                   CHURN_FILE_ENCODING="cp1252")
    _, validated = run_data_stages(cfg, fresh_pg_url, redis_url)
    assert validated["train"]["rows_checked"] == USUAL_ROWS and validated["train"]["rows_quarantined"] == 0
    clean = pd.read_parquet(validated["train"]["clean_path"])
    assert clean["TotalCharges"].max() > 1000  # '1.234,56' read as 1234.56, not quarantined
    # the same file without the regional settings: delimiter, decimal comma and thousands mark are detected
    _, detected = run_data_stages(make_cfg(tmp_path / "plain", path, CHURN_FILE_ENCODING="cp1252"), fresh_pg_url,
                                  redis_url)
    assert detected["train"]["rows_quarantined"] == 0
    assert pd.read_parquet(detected["train"]["clean_path"])["TotalCharges"].max() == clean["TotalCharges"].max()


def test_inferred_kinds_flow_through_ingest_into_the_run_spec_and_validation(corpus, tmp_path, fresh_pg_url,
                                                                             redis_url):
    from churn.data.spec import load_run_spec

    cfg = make_cfg(tmp_path, corpus["clean"], CHURN_NUMERIC_COLUMNS="", CHURN_BOOLEAN_COLUMNS="",
                   CHURN_CATEGORICAL_COLUMNS="")
    run, validated = run_data_stages(cfg, fresh_pg_url, redis_url)
    spec = load_run_spec(run["run_dir"])  # what split and train read
    assert set(spec.boolean) == {"SeniorCitizen", "Partner", "Dependents", "PhoneService", "PaperlessBilling"}
    assert spec.inference["sample_rows"] == USUAL_ROWS
    assert validated["train"]["success"] and validated["train"]["rows_quarantined"] == 0


def test_a_dataset_without_a_suite_gets_one_proposed_then_enforced_and_reviewed(tmp_path, fresh_pg_url, redis_url,
                                                                               pg_conn, monkeypatch, capsys):
    """Only path, id and label (and the label's values): kinds inferred, suite proposed on run 1, enforced on run 2."""
    from churn.data import suites
    from tests.support.bad_inputs.corpus import clean_frame

    drop = tmp_path / "drop"
    (drop / "2026-11-20").mkdir(parents=True)
    (drop / "2026-11-21").mkdir(parents=True)
    clean_frame(seed=3).to_csv(drop / "2026-11-20" / "export.csv", index=False)
    second = clean_frame(seed=4)
    second.loc[17, "Contract"] = "Lifetime"  # a value the first delivery never had
    second.to_csv(drop / "2026-11-21" / "export.csv", index=False)
    env = {"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(drop / "{ds}" / "export.csv"),
           "CHURN_ID_COLUMN": "customerID", "CHURN_LABEL_COLUMN": "Churn",
           "CHURN_LABEL_VALUES": "Yes:1,No:0", "CHURN_SUITE": "crm_export",
           "CHURN_STATE_DIR": str(tmp_path / "state")}
    cfg = ChurnConfig.from_env(env)
    assert suites.hand_written("crm_export") is None

    run1, first = run_data_stages(cfg, fresh_pg_url, redis_url, date(2026, 11, 20))
    assert first["train"]["suite_version"] == "baseline" and first["train"]["rows_quarantined"] == 0
    proposal = json.loads(Path(first["train"]["proposed_suite"]).read_text())
    kinds = {(e["type"], e["kwargs"].get("column")) for e in proposal["expectations"]}
    assert ("expect_column_values_to_be_in_set", "Contract") in kinds
    assert ("expect_column_values_to_be_between", "MonthlyCharges") in kinds
    assert ("expect_column_values_to_be_unique", "customerID") in kinds
    assert suites.active_suite(pg_conn, "crm_export")[0] == 1
    again = run_data_stages(cfg, fresh_pg_url, redis_url, date(2026, 11, 20))[1]  # a re-run stores no second copy
    assert again["train"]["suite_version"] == "baseline" and suites.active_suite(pg_conn, "crm_export")[0] == 1

    run2, second_validated = run_data_stages(cfg, fresh_pg_url, redis_url, date(2026, 11, 21))
    assert second_validated["train"]["suite_version"] == "1" and second_validated["train"]["proposed_suite"] is None
    bad = quarantined(pg_conn)
    assert list(bad) == [second.loc[17, "customerID"]]
    assert "expect_column_values_to_be_in_set(Contract)" in bad[second.loc[17, "customerID"]]
    with pg_conn.cursor() as cur:
        cur.execute("SELECT run_key, dataset, suite_version FROM churn.validation_results ORDER BY 1, 2")
        assert cur.fetchall() == [("2026-11-20", "score", "baseline"), ("2026-11-20", "train", "baseline"),
                                  ("2026-11-21", "score", "1"), ("2026-11-21", "train", "1")]
    pg_conn.commit()

    # review from the command line: show, diff a run against it, accept a new version
    monkeypatch.setenv("CHURN_POSTGRES_URL", fresh_pg_url)
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path / "state"))
    assert suites.main(["show", "crm_export"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert suites.main(["diff", "crm_export", "2026-11-21"]) == 0
    assert "expect_column_values_to_be_between(TotalCharges)" in capsys.readouterr().out
    assert suites.main(["accept", "crm_export", "2026-11-21"]) == 0
    assert "version 2 is active" in capsys.readouterr().out
    assert suites.active_suite(pg_conn, "crm_export")[0] == 2
    assert suites.main(["show", "crm_export", "--version", "1"]) == 0  # earlier versions stay readable
    assert json.loads(capsys.readouterr().out)["version"] == 1
