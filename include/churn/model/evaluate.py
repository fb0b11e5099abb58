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
    auc = float(roc_auc_score(y_true, proba))
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
        "roc_auc": auc,
        "roc_auc_ci_low": auc_lower_bound(auc, int(y_true.sum()), int(len(y_true) - y_true.sum())),
        "pr_auc": float(average_precision_score(y_true, proba)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba)),
        "base_rate": base_rate,
        "top_decile_lift": top_rate / base_rate if base_rate > 0 else float("nan"),
        "top_decile_capture": float(y_true[order[:top_n]].sum() / max(y_true.sum(), 1)),
        "calibration": calibration,
        "test_rows": int(len(y_true)),
        **curve_points(y_true, proba),
    }


def _thin(xs: np.ndarray, ys: np.ndarray, max_points: int) -> tuple[list[float], list[float]]:
    """Keep at most ``max_points`` evenly spaced points (always the ends) so curves stay small in JSON."""
    if len(xs) > max_points:
        keep = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return [round(float(x), 5) for x in xs], [round(float(y), 5) for y in ys]


def curve_points(y_true: np.ndarray, proba: np.ndarray, max_points: int = 101) -> dict:
    """ROC and precision-recall curve points (thinned) for the run report's plots."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y_true, proba)
    precision, recall, _ = precision_recall_curve(y_true, proba)
    order = np.argsort(recall, kind="stable")  # ascending recall, so the thinning keeps the curve's shape
    roc_x, roc_y = _thin(fpr, tpr, max_points)
    pr_x, pr_y = _thin(recall[order], precision[order], max_points)
    return {"roc_curve": {"fpr": roc_x, "tpr": roc_y}, "pr_curve": {"recall": pr_x, "precision": pr_y}}


def auc_lower_bound(auc: float, positives: int, negatives: int, z: float = 1.96) -> float:
    """Lower end of the ~95% confidence interval of a ROC AUC (Hanley & McNeil 1982 standard error)."""
    if positives == 0 or negatives == 0:
        return float("nan")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives)
    return float(auc - z * np.sqrt(max(variance, 0.0)))


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger becomes champion, and why."""

    promote: bool
    reason: str


def gate(challenger_auc: float, champion_auc: float | None, min_roc_auc: float, max_auc_drop: float,
         challenger_auc_ci_low: float | None = None, champion_incomparable: str | None = None,
         allow_incomparable: bool = True) -> GateDecision:
    """Promote only above the absolute floor and within ``max_auc_drop`` of the champion on the same rows.

    When ``challenger_auc_ci_low`` (lower end of the AUC's 95% interval) is given, the challenger must
    also be distinguishable from a random ranking (ci_low > 0.5): a useless model that is lucky on a
    small test split is never promoted, even under a permissive floor.
    """
    if min_roc_auc <= 0:
        return GateDecision(False, "no minimum ROC AUC configured (CHURN_MIN_ROC_AUC <= 0): promotion disabled")
    if not challenger_auc >= min_roc_auc:
        return GateDecision(False, f"test ROC AUC {challenger_auc:.4f} below the minimum {min_roc_auc:.4f}")
    if challenger_auc_ci_low is not None and not challenger_auc_ci_low > 0.5:
        return GateDecision(
            False,
            f"test ROC AUC {challenger_auc:.4f} is not distinguishable from random (95% interval starts at "
            f"{challenger_auc_ci_low:.4f} <= 0.5): the test split is too small or the model has no signal",
        )
    if champion_auc is None and champion_incomparable:
        # A champion exists but cannot score these rows (its signature no longer fits the data): this is
        # not a first model, and the reason says so, so a person can see that no comparison was made.
        if not allow_incomparable:
            return GateDecision(False, f"NOT compared: {champion_incomparable}; refused because "
                                       "CHURN_PROMOTE_WITHOUT_COMPARISON=false (promote it by hand after review)")
        return GateDecision(True, f"NOT compared with the champion ({champion_incomparable}); promoted on "
                                  f"thresholds alone: test ROC AUC {challenger_auc:.4f} >= minimum {min_roc_auc:.4f} "
                                  "(CHURN_PROMOTE_WITHOUT_COMPARISON=false refuses instead)")
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
