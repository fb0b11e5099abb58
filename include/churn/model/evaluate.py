"""Test-split metrics and the champion/challenger gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, calibration_bins: int = 10) -> dict:
    """ROC AUC, PR AUC, log loss, Brier, top-decile lift and capture, calibration curve."""
    y_true = np.asarray(y_true).astype(int)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-7, 1 - 1e-7)
    if len(np.unique(y_true)) < 2:
        raise ValueError("metrics need both classes in the test split; the population is too small")
    order = np.argsort(-proba, kind="stable")
    top_n = max(1, int(round(0.1 * len(proba))))
    base_rate = float(y_true.mean())
    top_rate = float(y_true[order[:top_n]].mean())
    edges = np.linspace(0, 1, calibration_bins + 1)
    bin_index = np.clip(np.digitize(proba, edges) - 1, 0, calibration_bins - 1)
    calibration = []
    for b in range(calibration_bins):
        mask = bin_index == b
        if mask.any():
            calibration.append(
                {"bin": b, "mean_predicted": float(proba[mask].mean()), "observed_rate": float(y_true[mask].mean()),
                 "count": int(mask.sum())}
            )
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "pr_auc": float(average_precision_score(y_true, proba)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba)),
        "base_rate": base_rate,
        "top_decile_lift": top_rate / base_rate if base_rate > 0 else float("nan"),
        "top_decile_capture": float(y_true[order[:top_n]].sum() / max(y_true.sum(), 1)),
        "calibration": calibration,
        "test_rows": int(len(y_true)),
    }


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger becomes champion, and why."""

    promote: bool
    reason: str


def gate(challenger_auc: float, champion_auc: float | None, min_roc_auc: float, max_auc_drop: float) -> GateDecision:
    """Promote only above the absolute floor and within ``max_auc_drop`` of the champion on the same rows."""
    if min_roc_auc <= 0:
        return GateDecision(False, "no minimum ROC AUC configured (CHURN_MIN_ROC_AUC <= 0): promotion disabled")
    if not challenger_auc >= min_roc_auc:
        return GateDecision(False, f"test ROC AUC {challenger_auc:.4f} below the minimum {min_roc_auc:.4f}")
    if champion_auc is None:
        return GateDecision(True, f"first model: test ROC AUC {challenger_auc:.4f} >= minimum {min_roc_auc:.4f}")
    if challenger_auc < champion_auc - max_auc_drop:
        return GateDecision(
            False,
            f"test ROC AUC {challenger_auc:.4f} is worse than champion's {champion_auc:.4f} "
            f"by more than the allowed {max_auc_drop:.4f}",
        )
    return GateDecision(
        True, f"test ROC AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} (allowed drop {max_auc_drop:.4f})"
    )
