"""Unit tests: the run report builder and the metrics it plots (curve points, score summary, PSI)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from churn.model.evaluate import classification_metrics, curve_points
from churn.monitoring import psi, score_summary
from churn.report import build_report, write_report


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    good = np.clip(0.5 * y + rng.normal(0.25, 0.2, 2000), 0, 1)
    weak = np.clip(0.1 * y + rng.normal(0.4, 0.2, 2000), 0, 1)
    return y, good, weak


def test_curve_points_are_thinned_monotone_and_span_the_unit_square(sample):
    y, good, _ = sample
    curves = curve_points(y, good, max_points=50)
    fpr, tpr = curves["roc_curve"]["fpr"], curves["roc_curve"]["tpr"]
    assert len(fpr) <= 50 and (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    recall = curves["pr_curve"]["recall"]
    assert len(recall) <= 50 and recall == sorted(recall) and recall[-1] == 1.0


def test_classification_metrics_keep_their_keys_and_add_curves(sample):
    y, good, _ = sample
    metrics = classification_metrics(y, good)
    assert {"roc_auc", "pr_auc", "brier", "calibration", "roc_curve", "pr_curve"} <= set(metrics)
    # the trapezoid area under the stored (thinned) ROC points is close to the exact AUC
    area = np.trapezoid(metrics["roc_curve"]["tpr"], metrics["roc_curve"]["fpr"])
    assert abs(area - metrics["roc_auc"]) < 0.01


def test_psi_is_zero_for_identical_and_grows_with_shift(sample):
    _, good, weak = sample
    a, b = score_summary(good), score_summary(weak)
    assert psi(a["histogram"]["counts"], a["histogram"]["counts"]) == pytest.approx(0.0, abs=1e-12)
    shifted = psi(a["histogram"]["counts"], b["histogram"]["counts"])
    assert shifted > 0.1
    assert psi([50, 50], [40, 60]) == pytest.approx(0.1 * np.log(1.25) + 0.1 * np.log(1.2), rel=1e-9)
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2, 3], [1, 2])


def test_score_summary_counts_and_bands():
    summary = score_summary(np.array([0.05, 0.2, 0.35, 0.5, 0.7, 0.95]), (0.3, 0.6))
    assert summary["count"] == 6 and sum(summary["histogram"]["counts"]) == 6
    assert summary["band_shares"] == pytest.approx({"low": 2 / 6, "medium": 2 / 6, "high": 2 / 6})
    with pytest.raises(ValueError, match="empty"):
        score_summary(np.array([]))


def _stages(sample, with_champion=True, with_drift=True, with_docs=True):
    y, good, weak = sample
    evaluation = {
        "evaluated": True, "challenger": "tpot", "promote": True, "reason": "test ROC AUC 0.9 vs champion 0.7",
        "candidates": [{"name": "tpot", "valid_roc_auc": 0.9, "metrics": classification_metrics(y, good)},
                       {"name": "logistic_baseline", "valid_roc_auc": 0.8, "metrics": classification_metrics(y, weak)}],
        "champion_version": "2026-11-01-tpot" if with_champion else None,
        "champion_metrics": classification_metrics(y, weak) if with_champion else None,
    }
    validated = {"train": {"rows_checked": 1000, "rows_quarantined": 3, "success": True},
                 "score": {"rows_checked": 900, "rows_quarantined": 0, "success": True}}
    if with_docs:
        validated["train"]["data_docs_path"] = "/state/runs/2026-11-20/data_docs/index.html"
    stages = {"validated": validated, "evaluation": evaluation,
              "registered": {"registered": [{"version": "2026-11-20-tpot", "status": "champion",
                                             "test_roc_auc": 0.9, "reason": "better"}]},
              "pg_published": {"rows": 900}, "exported": {"skipped": True, "reason": "dry run: nothing exported"}}
    if with_drift:
        stages["drift"] = {"threshold": 0.2, "features": {"tenure_months": {"psi": 0.31},
                                                          "monthly_charges": {"psi": 0.02}}}
    return stages


def _summary():
    return {"rows_ingested": {"train": 1000, "score": 900}, "rows_validated": {"train": 997, "score": 900},
            "rows_quarantined": {"train": 3, "score": 0}, "scored": 900, "published_postgres": 900,
            "published_redis": 900, "export_rows": 0, "champion": "2026-11-20-tpot", "champion_test_roc_auc": 0.9,
            "gate": {"promote": True, "reason": "better"},
            "stage_seconds": {"ingested": 1.5, "validated": 2.0, "trained": 30.0, "scored": 0.4}}


def test_full_report_is_self_contained_with_all_plots(sample, tmp_path):
    _, good, weak = sample
    monitoring = {"score_summary": score_summary(good), "previous_score_summary": score_summary(weak),
                  "previous_run_key": "2026-11-19", "prediction_psi": 0.42, "max_prediction_psi": 0.2}
    realized = [{"scored_run_key": "2026-10-21", "model_version": "2026-10-01-tpot", "customers": 900, "churned": 80,
                 "realized_roc_auc": 0.71, "expected_roc_auc": 0.8}]
    run = {"run_key": "2026-11-20", "airflow_run_id": "manual__1", "params": {"dry_run": True, "note": "check"}}
    page = build_report(run, _summary(), _stages(sample), monitoring, realized,
                        data_docs_href=lambda p: "data_docs/index.html")
    # ROC, PR, calibration, score distribution, stage timings, feature drift
    assert page.count("<svg") == 6
    assert not re.search(r"""(src|href)=["']https?://""", page), "the report must not load anything external"
    for text in ("Churn run 2026-11-20", "DRY RUN", "2026-11-01-tpot (champion)", "tenure_months", "0.4200",
                 "above threshold 0.2", 'href="data_docs/index.html"', "2026-10-21", "dry run: nothing exported"):
        assert text in page, text
    path = write_report(tmp_path / "report.html", page)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == page and path.endswith("report.html")
    assert not list(tmp_path.glob("*.tmp"))


def test_report_notes_missing_parts_instead_of_failing(sample):
    stages = _stages(sample, with_champion=False, with_drift=False, with_docs=False)
    page = build_report({"run_key": "2026-11-20"}, _summary(), stages, {}, [])
    assert "no feature drift computed" in page and "no GX Data Docs" in page
    assert "no previous run" not in page and "no scores in this run" in page
    assert page.count("<svg") == 4  # ROC, PR, calibration, stage timings
    assert "(champion)" not in page


def test_report_without_training_says_why(sample):
    stages = {"evaluation": {"evaluated": False, "promote": False, "reason": "champion is fresh", "candidates": []}}
    page = build_report({"run_key": "2026-11-21"}, {"stage_seconds": {}}, stages)
    assert "no training in this run: champion is fresh" in page and "<svg" not in page


def test_report_escapes_every_value_it_did_not_make(sample):
    stages = _stages(sample)
    stages["evaluation"]["reason"] = "<script>alert('gate')</script>"
    run = {"run_key": "2026-11-20", "airflow_run_id": "<img src=x onerror=alert(1)>",
           "params": {"note": "<script>alert('note')</script>"}}
    page = build_report(run, _summary(), stages, {}, [])
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt;" in page
    assert page.count("<svg") == 6 - 1  # plots are inserted as they are (made here), no score plot without scores


def test_report_shows_tonights_experiment_splits_and_the_experiments_judged(sample):
    import numpy as np

    from churn.experiments.analysis import analyze
    from churn.experiments.definitions import parse_experiments

    exp = parse_experiments({"experiments": [{"id": "retention-email", "salt": "s", "start": "2026-10-01", "arms": [
        {"name": "contacted", "weight": 80, "model": "champion"},
        {"name": "holdout", "weight": 20, "model": "champion", "contact": False}]}]}).experiments[0]
    rng = np.random.default_rng(2)
    arms = np.where(rng.random(10_000) < 0.8, "contacted", "holdout")
    scores = rng.random(10_000)
    churned = (rng.random(10_000) < np.where(arms == "contacted", 0.5, 0.7) * scores * 0.3).astype(int)
    judged = [analyze(exp, arms, scores, churned)]
    stages = _stages(sample)
    stages["experiments"] = {"experiments": [
        {"experiment_id": "retention-email", "counts": {"contacted": 8012, "holdout": 1988}, "new": 25,
         "p_value": 0.78, "flagged": False, "holdout_arms": ["holdout"]},
        {"experiment_id": "<script>x</script>", "counts": {"a": 10, "b": 90}, "new": 0, "p_value": 1e-9,
         "flagged": True, "holdout_arms": []}]}
    page = build_report({"run_key": "2026-11-20"}, _summary(), stages, {}, [], experiments=judged)
    for text in ("<h2>Experiments</h2>", "contacted 8,012, holdout 1,988", "split broken: results withheld",
                 "contacted vs holdout", "Qini", "&lt;script&gt;x&lt;/script&gt;"):
        assert text in page, text
    assert "<script>x" not in page
    uplift = judged[0].comparisons[0].uplift
    assert f"{uplift.estimate:+.2%} [{uplift.low:+.2%}, {uplift.high:+.2%}]" in page
    quiet = build_report({"run_key": "2026-11-20"}, _summary(), {**_stages(sample), "experiments": {
        "skipped": True, "reason": "CHURN_EXPERIMENTS_FILE is not set: no experiment"}}, {}, [])
    assert "CHURN_EXPERIMENTS_FILE is not set: no experiment" in quiet and "Judged tonight" not in quiet
