"""The analysis of an experiment once its labels matured: per-arm quality, uplift against the holdout, Qini.

Input: one row per assigned customer with its ``arm``, the ``score`` it was served when assigned, whether
it was ``contacted`` (in an export) and whether it ``churned`` within the label window. Output: per arm the
realized ROC AUC, PR AUC (average precision), Brier score, reliability curve, churn rate and the precision
(churn rate) of its top-k by score; between every contact arm and every holdout arm the uplift in churn
rate (holdout minus contact arm: positive = the action retained customers), absolute and relative with 95%
confidence intervals, and the Qini coefficient; the sample-ratio check, which withholds every result
while it is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from churn.experiments.assignment import SplitCheck, sample_ratio_check
from churn.experiments.definitions import Experiment

Z95 = 1.959963984540054


@dataclass
class Interval:
    """An estimate with its 95% confidence interval."""

    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        """True when ``value`` lies within the interval."""
        return self.low <= value <= self.high


def uplift(holdout_churned: int, holdout_n: int, treated_churned: int, treated_n: int) -> tuple[Interval, Interval]:
    """Churn rate of the holdout minus that of the treated arm (absolute, Wald interval) and the same relative
    to the holdout's rate (1 - risk ratio, interval from the log risk ratio's normal approximation)."""
    p_h, p_t = holdout_churned / holdout_n, treated_churned / treated_n
    diff = p_h - p_t
    se = math.sqrt(p_h * (1 - p_h) / holdout_n + p_t * (1 - p_t) / treated_n)
    absolute = Interval(diff, diff - Z95 * se, diff + Z95 * se)
    if holdout_churned == 0 or treated_churned == 0:
        return absolute, Interval(diff / p_h if p_h else float("nan"), float("nan"), float("nan"))
    log_rr = math.log(p_t / p_h)
    se_log = math.sqrt(1 / treated_churned - 1 / treated_n + 1 / holdout_churned - 1 / holdout_n)
    relative = Interval(1 - math.exp(log_rr), 1 - math.exp(log_rr + Z95 * se_log), 1 - math.exp(log_rr - Z95 * se_log))
    return absolute, relative


def qini_coefficient(treated_scores: np.ndarray, treated_retained: np.ndarray, control_scores: np.ndarray,
                     control_retained: np.ndarray, points: int = 100) -> float:
    """Area between the Qini curve and the random-targeting line, as a share of the treated population.

    Targeting the top fraction f of each group by score, Qini(f) = R_t(f) - R_c(f) * N_t(f) / N_c(f): the
    customers retained in the treated group beyond what the control group's rate predicts (R = retained,
    i.e. not churned). The random line goes from 0 to Qini(1). Positive: the scores rank the customers the
    action retains first.
    """
    def cumulative(scores, outcome):
        order = np.argsort(-scores, kind="stable")
        return np.cumsum(outcome[order]), len(scores)

    r_t, n_t = cumulative(np.asarray(treated_scores), np.asarray(treated_retained, dtype=float))
    r_c, n_c = cumulative(np.asarray(control_scores), np.asarray(control_retained, dtype=float))
    if n_t == 0 or n_c == 0:
        return float("nan")
    fractions = np.linspace(0, 1, points + 1)[1:]
    k_t = np.maximum(1, np.round(fractions * n_t).astype(int))
    k_c = np.maximum(1, np.round(fractions * n_c).astype(int))
    curve = np.r_[0.0, r_t[k_t - 1] - r_c[k_c - 1] * k_t / k_c]
    xs = np.r_[0.0, fractions]
    area = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(xs)))
    return (area - curve[-1] / 2) / n_t


@dataclass
class ArmResult:
    """One arm's realized figures."""

    arm: str
    customers: int
    churn_rate: float
    roc_auc: float | None
    pr_auc: float | None
    brier: float
    reliability: list[tuple[float, float, int]] = field(default_factory=list)
    """(mean score, churn rate, customers) of ten score bins of equal width."""
    top_k_precision: float | None = None


@dataclass
class Comparison:
    """A contact arm against a holdout arm."""

    treated: str
    holdout: str
    uplift: Interval
    relative_uplift: Interval
    qini: float


@dataclass
class ExperimentAnalysis:
    """The experiment's results, or why they are withheld."""

    experiment_id: str
    split: SplitCheck
    withheld: str | None = None
    arms: list[ArmResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)


def arm_result(arm: str, scores: np.ndarray, churned: np.ndarray, top_k: float = 0.1) -> ArmResult:
    """Realized ROC AUC, PR AUC, Brier, reliability and top-k precision of one arm's served scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, churned = np.asarray(scores, dtype=float), np.asarray(churned, dtype=int)
    both = 0 < churned.sum() < len(churned)
    bins = np.minimum((scores * 10).astype(int), 9)
    reliability = [(float(scores[bins == b].mean()), float(churned[bins == b].mean()), int((bins == b).sum()))
                   for b in range(10) if (bins == b).any()]
    k = max(1, int(round(top_k * len(scores))))
    top = np.argsort(-scores, kind="stable")[:k]
    return ArmResult(arm, len(scores), float(churned.mean()) if len(churned) else float("nan"),
                     float(roc_auc_score(churned, scores)) if both else None,
                     float(average_precision_score(churned, scores)) if both else None,
                     float(np.mean((scores - churned) ** 2)), reliability,
                     float(churned[top].mean()) if len(scores) else None)


def analyze(experiment: Experiment, arms: np.ndarray, scores: np.ndarray, churned: np.ndarray,
            top_k: float = 0.1, srm_threshold: float = 0.001) -> ExperimentAnalysis:
    """The whole analysis of one experiment (arrays aligned per customer; see the module docstring)."""
    arms = np.asarray(arms).astype(str)
    counts = {a.name: int((arms == a.name).sum()) for a in experiment.arms}
    split = sample_ratio_check(experiment, counts, srm_threshold)
    if split.flagged:
        return ExperimentAnalysis(experiment.id, split, withheld=(
            f"sample ratio mismatch (p = {split.p_value:.2g} < {srm_threshold}): the arms' sizes {counts} do not "
            "follow the weights, so any difference may come from how customers were split; find the cause first"))
    result = ExperimentAnalysis(experiment.id, split)
    masks = {a.name: arms == a.name for a in experiment.arms}
    for arm in experiment.arms:
        result.arms.append(arm_result(arm.name, scores[masks[arm.name]], churned[masks[arm.name]], top_k))
    for holdout in (a for a in experiment.arms if not a.contact):
        h = masks[holdout.name]
        for treated in (a for a in experiment.arms if a.contact):
            t = masks[treated.name]
            if not h.any() or not t.any():
                continue
            absolute, relative = uplift(int(churned[h].sum()), int(h.sum()), int(churned[t].sum()), int(t.sum()))
            result.comparisons.append(Comparison(
                treated.name, holdout.name, absolute, relative,
                qini_coefficient(scores[t], 1 - churned[t], scores[h], 1 - churned[h])))
    return result
