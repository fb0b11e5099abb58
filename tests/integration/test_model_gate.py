"""Integration: a label-shuffled (useless) challenger is never promoted, through the real stages.

train (baseline + TPOT on a real in-process Dask cluster, tiny budget) -> evaluate_and_gate
-> register against a real Postgres; the refused models stay in the registry with their
metrics and reason, and scoring keeps using the champion.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import psycopg2
import pytest
from distributed import LocalCluster

from churn.stages import common as common_stages, model as model_stages, scoring as scoring_stages
from churn.model import registry
from churn.model.train import fit_baseline
from tests.support.stage_refs import validated_ref


def _shuffled_splits(data: dict, folder: Path, seed: int, keep_test: bool = False) -> dict:
    """The same split files with the label permuted within each split (all but test with ``keep_test``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for name, path in data["splits"]["paths"].items():
        frame = pd.read_parquet(path)
        if not (keep_test and name == "test"):
            frame["churned"] = rng.permutation(frame["churned"].to_numpy())
        paths[name] = str(folder / f"split_{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    return {**data["splits"], "paths": paths, "data_fingerprint": "shuffled-" + str(seed)}


def _repeated_train_split(data: dict, folder: Path, rows: int) -> dict:
    """The splits with the training split repeated up to ``rows`` rows (ids kept unique)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = dict(data["splits"]["paths"])
    train = pd.read_parquet(paths["train"])
    copies = []
    for k in range(rows // len(train) + 1):
        copy = train.copy()
        copy["customer_id"] = copy["customer_id"].astype(str) + f"-{k}"
        copies.append(copy)
    paths["train"] = str(folder / "split_train.parquet")
    pd.concat(copies, ignore_index=True).iloc[:rows].to_parquet(paths["train"], index=False)
    return {**data["splits"], "paths": paths, "data_fingerprint": "repeated"}


def _baseline_only(data: dict, splits: dict, run: dict) -> dict:
    """What ``model_stages.train`` returns, for a real logistic baseline fitted on ``splits`` (no TPOT)."""
    train, valid = (pd.read_parquet(splits["paths"][n]) for n in ("train", "valid"))
    cand = fit_baseline(train, valid, data["signature"], random_state=0)
    out = Path(run["run_dir"]) / "candidates"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cand.name}.joblib"
    joblib.dump({"model": cand.pipeline, "signature": data["signature"].as_dict()}, path)
    return {"retrained": True, "reason": "test", "candidates": [
        {"name": cand.name, "path": str(path), "sha256": registry.file_sha256(path),
         "valid_roc_auc": cand.valid_roc_auc, "fit_seconds": 0.0,
         "params": cand.params}]}


def _registry_rows(url: str) -> dict:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version, status, reason, metrics, params, formats FROM churn.model_registry")
        rows = {r[0]: {"status": r[1], "reason": r[2], "metrics": r[3], "params": r[4], "formats": r[5]}
                for r in cur.fetchall()}
        cur.execute("SELECT version FROM churn.model_champion")
        champion = cur.fetchone()
    conn.close()
    return {"rows": rows, "champion": champion[0] if champion else None}


def _run(data: dict, run_key: str, params: dict | None = None) -> dict:
    run_dir = data["state"] / "runs" / run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    return {"run_key": run_key, "as_of": run_key, "run_dir": str(run_dir), "airflow_run_id": "t",
            "params": params or {}}


def test_first_model_trained_on_shuffled_labels_is_refused(model_data, tmp_path):
    data = model_data
    splits = _shuffled_splits(data, tmp_path / "shuffled", seed=1)
    cfg = data["cfg"].replace(tpot_population_size=4, tpot_cv=2, train_progress_seconds=5, min_roc_auc=0.6)
    # budget and per-pipeline limit from the run's trigger params (the config says 2 / 0.5 minutes)
    run = _run(data, "2026-10-01", {"retrain": True, "train_budget_minutes": 0.15, "max_eval_minutes": 0.1})
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster:
        trained = model_stages.train(cfg.replace(dask_scheduler_address=cluster.scheduler_address), data["res"], run,
                                 splits)
    assert {c["name"] for c in trained["candidates"]} == {"logistic_baseline", "hist_gradient_boosting", "tpot"}
    for cand in trained["candidates"]:  # every candidate carries the same k-fold estimate with its spread
        assert 0 <= cand["cv_roc_auc_std"] < 0.2 and cand["cv_folds"] == 5 and cand["cv_rows"] > 0
    evaluation = model_stages.evaluate_and_gate(cfg, data["res"], run, splits, trained)
    assert evaluation["promote"] is False
    registered = model_stages.register(cfg, data["res"], run, splits, evaluation)
    assert registered["champion"] is None
    state = _registry_rows(data["url"])
    assert state["champion"] is None
    by_name = {}
    for cand in evaluation["candidates"]:
        assert cand["version"] == f"2026-10-01-{cand['name']}-{trained['attempt']}"
        row = by_name[cand["name"]] = state["rows"][cand["version"]]
        assert row["status"] == "refused" and row["reason"]
        assert row["metrics"]["roc_auc"] == pytest.approx(cand["metrics"]["roc_auc"])
        assert row["metrics"]["roc_auc"] < 0.6 or row["metrics"]["roc_auc_ci_low"] <= 0.5
        assert "joblib" in row["formats"]
    tpot_params = by_name["tpot"]["params"]
    assert tpot_params["budget_minutes"] == 0.15 and tpot_params["max_eval_minutes"] == 0.1
    assert tpot_params["dask_scheduler_address"].startswith("tcp://")
    # every registered model is exported where a converter exists and parity holds: the two defaults to ONNX
    # and PMML (the registry row says so and records the PMML parity); the TPOT winner when it converts
    assert by_name["logistic_baseline"]["formats"] == ["joblib", "onnx", "pmml"]
    assert "pmml" in by_name["hist_gradient_boosting"]["formats"]
    for row in by_name.values():
        pmml = row["params"]["pmml"]
        assert ("pmml" in row["formats"]) == pmml["exported"]
        assert pmml["parity_max_abs_diff"] < 1e-6 if pmml["exported"] else pmml["error"]
    # nothing to score with: the score stage says so instead of using a refused model
    with pytest.raises(common_stages.NoChampionError, match="refused by the gate"):
        scoring_stages.score(cfg, data["res"], run, validated_ref(score_clean=splits["paths"]["test"]), registered)


def test_shuffled_challenger_never_replaces_a_champion_even_with_a_permissive_floor(model_data, tmp_path):
    data = model_data
    # 1) a real model on the real labels becomes champion
    good_run = _run(data, "2026-10-02")
    cfg = data["cfg"]
    good = _baseline_only(data, data["splits"], good_run)
    evaluation = model_stages.evaluate_and_gate(cfg, data["res"], good_run, data["splits"], good)
    assert evaluation["promote"], evaluation["reason"]
    done = model_stages.register(cfg, data["res"], good_run, data["splits"], evaluation)
    champion = _registry_rows(data["url"])["champion"]
    assert champion == done["champion"] and champion.startswith("2026-10-02-logistic_baseline-")

    # 2) useless challengers, judged with a floor so low that only the champion comparison and the
    #    better-than-random check stand between them and promotion
    permissive = cfg.replace(min_roc_auc=0.01, max_auc_drop=0.05)
    for seed in range(3):
        splits = _shuffled_splits(data, tmp_path / f"s{seed}", seed=seed)
        run = _run(data, f"2026-10-1{seed}")
        trained = _baseline_only(data, splits, run)
        evaluation = model_stages.evaluate_and_gate(permissive, data["res"], run, splits, trained)
        assert evaluation["promote"] is False, evaluation["reason"]
        done = model_stages.register(permissive, data["res"], run, splits, evaluation)
        row = _registry_rows(data["url"])["rows"][done["registered"][0]["version"]]
        assert row["status"] == "refused"
        assert "champion" in row["reason"] or "random" in row["reason"]
    assert _registry_rows(data["url"])["champion"] == champion
    assert registry.champion(psycopg2.connect(data["url"])).version == champion

    # 3) scoring still uses the champion
    scored = scoring_stages.score(cfg, data["res"], _run(data, "2026-10-20"),
                                  validated_ref(score_clean=data["splits"]["paths"]["test"]), {"registered": []})
    assert scored["model_version"] == champion
    assert json.dumps(scored)  # a reference dict, JSON-able for XCom


def test_empty_tpot_search_falls_back_to_the_baseline_candidate(model_data, tmp_path):
    data = model_data
    run = _run(data, "2026-10-05", {"retrain": True, "train_budget_minutes": 0.001, "max_eval_minutes": 0.001})
    # 200k training rows, all searched (a huge rows-per-minute): no pipeline can be scored in 0.06 s, even on
    # the quarter of the rows the first generation uses (a 5,000-row sample once was, under no load).
    big = _repeated_train_split(data, tmp_path / "big", 200_000)
    cfg = data["cfg"].replace(tpot_population_size=2, tpot_cv=2, search_rows_per_minute=10**9)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster:
        trained = model_stages.train(cfg.replace(dask_scheduler_address=cluster.scheduler_address), data["res"], run,
                                 big)
    assert [c["name"] for c in trained["candidates"]] == ["logistic_baseline", "hist_gradient_boosting"]
    assert "CHURN_TRAIN_BUDGET_MINUTES" in trained["tpot_error"]
    evaluation = model_stages.evaluate_and_gate(cfg, data["res"], run, big, trained)
    # the defaults still compete, and the cross-validated estimate (not one validation split) picks
    assert evaluation["challenger"] == max(trained["candidates"], key=lambda c: c["cv_roc_auc"])["name"]


def test_a_candidate_swapped_after_training_is_never_unpickled(model_data, tmp_path):
    data = model_data
    run = _run(data, "2026-10-05")
    trained = _baseline_only(data, data["splits"], run)
    path = Path(trained["candidates"][0]["path"])
    # another pickle, valid and loadable, put in the candidate's place after the train task hashed it
    joblib.dump({"model": "not the trained model", "signature": data["signature"].as_dict()}, path)
    with pytest.raises(registry.ArtifactIntegrityError, match="does not match its recorded hash"):
        model_stages.evaluate_and_gate(data["cfg"], data["res"], run, data["splits"], trained)


def test_a_refused_retrain_of_the_same_date_never_touches_the_champion(model_data, tmp_path):
    """Two retrains of one logical date (a UI 'Retrain now' after the nightly run), the second refused."""
    data = model_data
    cfg = data["cfg"].replace(train_tpot=False)
    run = _run(data, "2026-10-05", {"retrain": True})
    first = model_stages.train(cfg, data["res"], run, data["splits"])
    evaluation = model_stages.evaluate_and_gate(cfg, data["res"], run, data["splits"], first)
    assert evaluation["promote"], evaluation["reason"]
    model_stages.register(cfg, data["res"], run, data["splits"], evaluation)
    conn = psycopg2.connect(data["url"])
    champion = registry.champion(conn)
    champion_bytes = Path(champion.artifact_path).read_bytes()

    # the same date again, trained on labels without signal and judged on the real test labels: refused
    # (a shuffled test split too would make both models' test AUC a coin toss on a few positives)
    shuffled = _shuffled_splits(data, tmp_path / "shuffled", seed=5, keep_test=True)
    second = model_stages.train(cfg, data["res"], run, shuffled)
    assert second["attempt"] != first["attempt"]
    evaluation2 = model_stages.evaluate_and_gate(cfg, data["res"], run, shuffled, second)
    assert evaluation2["promote"] is False, evaluation2["reason"]
    done = model_stages.register(cfg, data["res"], run, shuffled, evaluation2)
    refused_version = done["registered"][0]["version"]
    assert refused_version != champion.version and refused_version.startswith("2026-10-05-")

    after = registry.champion(conn)
    assert after == champion  # version, status, reason, metrics, signature, path, sha256, formats
    assert Path(after.artifact_path).read_bytes() == champion_bytes
    assert registry.file_sha256(after.artifact_path) == champion.artifact_sha256
    refused = registry.get(conn, refused_version)
    assert refused.status == "refused" and refused.folder != champion.folder
    refused_candidate = next(c for c in evaluation2["candidates"] if c["version"] == refused_version)
    assert refused.metrics["roc_auc"] == pytest.approx(refused_candidate["metrics"]["roc_auc"])

    # re-running the second attempt's register (a cleared task) is idempotent: no new row, nothing rewritten
    refused_bytes = Path(refused.artifact_path).read_bytes()
    again = model_stages.register(cfg, data["res"], run, shuffled, evaluation2)
    assert [r["version"] for r in again["registered"]] == [r["version"] for r in done["registered"]]
    assert registry.get(conn, refused_version) == refused
    assert Path(refused.artifact_path).read_bytes() == refused_bytes
    with conn.cursor() as cur:  # each attempt's candidates (logistic, HistGradientBoosting) once each
        cur.execute("SELECT count(*) FROM churn.model_registry WHERE run_key = '2026-10-05'")
        assert cur.fetchone()[0] == 2 * len(first["candidates"]) == 4
    conn.close()


def test_a_search_that_finds_nothing_better_leaves_the_best_default_as_challenger(model_data, tmp_path):
    """Seeding/bounding: a TPOT candidate below the defaults on the selection figure never becomes the challenger."""
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input
    from churn.model.train import Candidate, fit_hist_gradient_boosting, selection_estimate

    data = model_data
    run = _run(data, "2026-10-09", {"retrain": True})
    train, valid = pd.read_parquet(data["splits"]["paths"]["train"]), pd.read_parquet(data["splits"]["paths"]["valid"])
    signature: ModelSignature = data["signature"]
    # what a search that learned nothing returns: a recipe no better than the base rate
    weak_pipeline = Pipeline([("prep", build_preprocessor(signature)), ("model", DummyClassifier(strategy="prior"))])
    weak_pipeline.fit(to_model_input(train, signature), labels(train, signature))
    weak = Candidate("tpot", weak_pipeline, 0.5, 0.0, {"estimator": "DummyClassifier"})
    out = Path(run["run_dir"]) / "candidates"
    out.mkdir(parents=True, exist_ok=True)
    described = []
    for cand in (fit_baseline(train, valid, signature, 0), fit_hist_gradient_boosting(train, valid, signature, 0), weak):
        path = out / f"{cand.name}.joblib"
        joblib.dump({"model": cand.pipeline, "signature": signature.as_dict()}, path)
        described.append({"name": cand.name, "path": str(path), "sha256": registry.file_sha256(path),
                          "valid_roc_auc": cand.valid_roc_auc, "fit_seconds": 0.0, "params": cand.params,
                          **selection_estimate(cand.pipeline, train, valid, signature)})
    trained = {"retrained": True, "reason": "test", "attempt": "seed01", "candidates": described}
    evaluation = model_stages.evaluate_and_gate(data["cfg"], data["res"], run, data["splits"], trained)
    scores = {c["name"]: c["cv_roc_auc"] for c in described}
    assert scores["tpot"] < max(scores["logistic_baseline"], scores["hist_gradient_boosting"])
    assert evaluation["challenger"] in ("logistic_baseline", "hist_gradient_boosting")
    assert evaluation["challenger"] == max(scores, key=scores.get)
