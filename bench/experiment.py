"""Does the experiment analysis recover the truth? (issue 27): coverage, split checks and power, simulated.

The synthetic generator knows each customer's true probability of churning within the label window. On one
generated population this benchmark plants a retention action that multiplies the contacted customers'
hazard by ``--hazard-factor`` (so a contacted customer churns with ``1 - (1 - p) ** factor``) and scores the
customers with two models of known quality (the true logit plus Gaussian noise of standard deviation 2.0
for the champion, 0.3 for the challenger). Every simulated experiment assigns the customers with the
platform's own hash (``churn.experiments.assignment``, a new salt each time), draws who churns from the
true probabilities, and analyses them with ``churn.experiments.analysis``:

1. **uplift coverage**: arms ``contacted`` (80) / ``holdout`` (20), the contacted arm's customers above the
   champion's 70th score percentile are contacted; does the 95% interval of the uplift cover the planted
   value (the population mean of ``p - p_treated`` over the customers who would be contacted, times nothing
   else)? Target: 93-97% of ``--experiments`` experiments;
2. **split check**: the false-alarm rate with the declared 80/20 split (every experiment above plus
   ``--splits`` more on a 20,000-customer slice; target <= 0.5%), and how often a 48/52 split of 100,000
   customers declared 50/50 is flagged (target >= 99%);
3. **power**: arms ``champion`` / ``challenger``, each contacting its own top 30%; the sample size per arm
   is computed for the expected difference in churn rate (alpha 0.05, power 0.8), the experiment's traffic
   share set to give that many customers per arm; how often is the challenger's arm significantly better?
   Target >= 80%.

Results: ``bench/results/experiment.json`` (with the date, commit, machine and load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

from bench.run import machine
from churn.data.generate import generate
from churn.experiments.analysis import uplift
from churn.experiments.assignment import arm_bounds, bucket, sample_ratio_check, sample_size_per_arm
from churn.experiments.definitions import parse_experiments

RESULTS = Path(__file__).resolve().parent / "results" / "experiment.json"
NOISE = {"champion": 2.0, "challenger": 0.3}  # sd of the noise added to the true logit: the models' known quality
TARGETS = {"coverage_low": 0.93, "coverage_high": 0.97, "srm_false_alarm_max": 0.005, "srm_detect_min": 0.99,
           "power_min": 0.80}


def _experiment(exp_id: str, salt: str, arms: list[tuple[str, float, bool]], traffic=(0, 100)):
    return parse_experiments({"experiments": [{
        "id": exp_id, "salt": salt, "start": "2026-12-01", "layer": f"layer-{exp_id}-{salt}",
        "traffic": list(traffic),
        "arms": [{"name": n, "weight": w, "model": "champion", "contact": c} for n, w, c in arms]}]}).experiments[0]


def _arms(exp, ids: list[str]) -> np.ndarray:
    """Each customer's arm index (-1: not enrolled) by the platform's hash, vectorized over the bounds."""
    low, high = exp.traffic
    if (low, high) != (0.0, 100.0):
        layer = np.fromiter((bucket(f"layer:{exp.layer_name}", "", c) for c in ids), np.int32, len(ids))
        enrolled = (layer >= 100 * low) & (layer < 100 * high)
    else:
        enrolled = np.ones(len(ids), bool)
    buckets = np.fromiter((bucket(exp.id, exp.salt, c) for c in ids), np.int32, len(ids))
    edges = np.array([b[2] for b in arm_bounds(exp)])
    return np.where(enrolled, np.searchsorted(edges, buckets, side="right"), -1)


def _noisy_scores(p: np.ndarray, sigma: float, rng) -> np.ndarray:
    logit = np.log(p) - np.log1p(-p)
    return 1 / (1 + np.exp(-(logit + rng.normal(0, sigma, len(p)))))


def coverage(ids, p, champion, factor, experiments, rng) -> dict:
    """Uplift intervals against the planted value, and the split check on the same (correct) splits."""
    contact = champion > np.quantile(champion, 0.7)
    treated_p = 1 - (1 - p) ** factor
    planted = float(np.mean(np.where(contact, p - treated_p, 0.0)))
    covered, estimates, flagged = 0, [], 0
    for i in range(experiments):
        exp = _experiment("retention", f"cov-{i}", [("contacted", 80, True), ("holdout", 20, False)])
        arm = _arms(exp, ids)
        draw = rng.random(len(p))
        churned = np.where((arm == 0) & contact, draw < treated_p, draw < p)
        h, t = arm == 1, arm == 0
        absolute, _ = uplift(int(churned[h].sum()), int(h.sum()), int(churned[t].sum()), int(t.sum()))
        covered += absolute.covers(planted)
        estimates.append(absolute.estimate)
        flagged += sample_ratio_check(exp, {"contacted": int(t.sum()), "holdout": int(h.sum())}).flagged
    return {"experiments": experiments, "planted_uplift": planted, "mean_estimate": float(np.mean(estimates)),
            "coverage": covered / experiments, "srm_flagged_on_correct_splits": flagged}


def split_checks(ids, splits, rng) -> dict:
    """False alarms on more correct splits (a 20,000-customer slice), detection of a 48/52 split of 100,000."""
    flagged = 0
    for i in range(splits):
        exp = _experiment("split", f"srm-{i}", [("a", 80, True), ("b", 20, False)])
        arm = _arms(exp, ids[:20_000])
        flagged += sample_ratio_check(exp, {"a": int((arm == 0).sum()), "b": int((arm == 1).sum())}).flagged
    declared = _experiment("broken", "x", [("a", 50, True), ("b", 50, True)])
    broken = rng.binomial(100_000, 0.48, size=1000)  # a pipeline that loses 4% of one arm's customers
    detected = sum(sample_ratio_check(declared, {"a": int(a), "b": 100_000 - int(a)}).flagged for a in broken)
    return {"correct_splits": splits, "flagged": flagged, "broken_48_52_trials": len(broken),
            "broken_detected": int(detected)}


def power(ids, p, champion, challenger, factor, experiments, rng) -> dict:
    """The challenger's arm against the champion's, each contacting its own top 30%, at the computed size."""
    treated_p = 1 - (1 - p) ** factor
    rate = {name: float(np.mean(np.where(s > np.quantile(s, 0.7), treated_p, p)))
            for name, s in (("champion", champion), ("challenger", challenger))}
    effect = rate["champion"] - rate["challenger"]
    per_arm = sample_size_per_arm(rate["champion"], effect)
    share = min(100.0, 100.0 * 2 * per_arm / len(ids) * 1.02)  # a little over: enrollment is random too
    wins, sizes = 0, []
    for i in range(experiments):
        exp = _experiment("models", f"pow-{i}", [("champion", 50, True), ("challenger", 50, True)], (0, share))
        arm = _arms(exp, ids)
        draw = rng.random(len(p))
        score = np.where(arm == 0, champion, challenger)
        cut = np.where(arm == 0, np.quantile(champion, 0.7), np.quantile(challenger, 0.7))
        churned = np.where(score > cut, draw < treated_p, draw < p)
        a, b = arm == 0, arm == 1
        diff, _ = uplift(int(churned[a].sum()), int(a.sum()), int(churned[b].sum()), int(b.sum()))
        wins += diff.low > 0  # the challenger's arm churns significantly less (two-sided 95% interval)
        sizes.append((int(a.sum()), int(b.sum())))
    return {"experiments": experiments, "expected_churn_rate": rate, "expected_difference": effect,
            "sample_size_per_arm": per_arm, "traffic_percent": share,
            "mean_arm_sizes": [float(np.mean([s[0] for s in sizes])), float(np.mean([s[1] for s in sizes]))],
            "power": wins / experiments}


def main(argv: list[str] | None = None) -> int:
    """Run the three checks and write the results JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.experiment")
    parser.add_argument("--customers", type=int, default=200_000, help="generated population (active ones used)")
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--hazard-factor", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    oracle = generate(args.customers, date(2026, 11, 21), seed=args.seed).oracle
    ids = oracle["customer_id"].astype(str).tolist()
    p = np.clip(oracle["true_probability"].to_numpy(dtype=float), 1e-6, 1 - 1e-6)
    rng = np.random.default_rng(args.seed)
    champion, challenger = _noisy_scores(p, NOISE["champion"], rng), _noisy_scores(p, NOISE["challenger"], rng)
    result = {
        "benchmark": "experiment", "measured_at": started.isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.strip(),
        "machine": machine(), "population": len(ids), "base_churn_rate": float(p.mean()),
        "hazard_factor": args.hazard_factor, "model_noise_sd": NOISE,
        "targets": TARGETS,
        "coverage": coverage(ids, p, champion, args.hazard_factor, args.experiments, rng),
        "split_check": split_checks(ids, args.splits, rng),
        "power": power(ids, p, champion, challenger, args.hazard_factor, args.experiments, rng),
    }
    c, s, w = result["coverage"], result["split_check"], result["power"]
    false_alarm = (c["srm_flagged_on_correct_splits"] + s["flagged"]) / (c["experiments"] + s["correct_splits"])
    result["summary"] = {
        "coverage": c["coverage"], "srm_false_alarm_rate": false_alarm,
        "srm_detection_rate": s["broken_detected"] / s["broken_48_52_trials"], "power": w["power"],
        "met": {"coverage": TARGETS["coverage_low"] <= c["coverage"] <= TARGETS["coverage_high"],
                "srm_false_alarm": false_alarm <= TARGETS["srm_false_alarm_max"],
                "srm_detection": s["broken_detected"] / s["broken_48_52_trials"] >= TARGETS["srm_detect_min"],
                "power": w["power"] >= TARGETS["power_min"]}}
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["machine"]["load_average_at_end"] = list(__import__("os").getloadavg())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0 if all(result["summary"]["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
