"""Experiments (issue 27 items 1, 2, 4): the file's validation, the published hash, shares, layers, split checks."""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import date

import pytest

from churn.experiments.assignment import (
    BUCKETS, TEST_VECTORS, arm_bounds, arm_of, bucket, sample_ratio_check, sample_size_per_arm,
)
from churn.experiments.definitions import ExperimentsError, load_experiments

EXAMPLE = """\
experiments:
  - id: boosting-vs-champion
    salt: "2026-12"
    start: 2026-12-01
    arms:
      - {name: control,    weight: 45, model: champion}
      - {name: challenger, weight: 45, model: hist_gradient_boosting}
      - {name: holdout,    weight: 10, model: champion, contact: false}
"""
IDS = [f"C{i:08d}" for i in range(1, 100_001)]


def _file(tmp_path, text: str):
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    return path


def test_the_published_test_vectors_are_sha256_computed_by_another_tool():
    for experiment_id, salt, customer_id, expected in TEST_VECTORS:
        assert bucket(experiment_id, salt, customer_id) == expected
        # coreutils' sha256sum, not Python's hashlib: the documented recipe, reproduced outside the code
        digest = subprocess.run(["sha256sum"], input=f"{experiment_id}|{salt}|{customer_id}".encode(),
                                capture_output=True, check=True).stdout.split()[0]
        assert int(digest[:16], 16) % BUCKETS == expected


def test_the_example_file_parses_and_arms_take_their_weights_share(tmp_path):
    experiments = load_experiments(_file(tmp_path, EXAMPLE))
    exp = experiments.experiments[0]
    assert [a.name for a in exp.arms] == ["control", "challenger", "holdout"]
    assert [a.contact for a in exp.arms] == [True, True, False] and exp.end is None
    assert arm_bounds(exp) == [("control", 0, 4500), ("challenger", 4500, 9000), ("holdout", 9000, 10000)]
    assert experiments.active(date(2026, 11, 30)) == [] and experiments.active(date(2026, 12, 1)) == [exp]
    counts = Counter(arm_of(exp, cid) for cid in IDS)
    for name, share in (("control", 0.45), ("challenger", 0.45), ("holdout", 0.10)):
        assert abs(counts[name] / len(IDS) - share) < 0.005, counts  # ~3 standard errors at 100k
    check = sample_ratio_check(exp, dict(counts))
    assert not check.flagged and check.p_value > 0.001


@pytest.mark.parametrize("text, where, fix", [
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    arms: [{name: x, weight: 1, model: m}, "
     "{name: y, weight: 1, model: m}]\n    weigth: 3\n", ":2:", "unknown key(s) ['weigth']"),
    ("experiments:\n  - id: a\n    start: 2026-12-01\n    arms: []\n", ":2:", "without 'salt'"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    arms:\n      - {name: x, weight: 1, model: m}\n"
     "      - {name: y, weight: -2, model: m}\n", ":7:", "weight -2 must be a positive number"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-13-01\n    arms: []\n", ":2:", "write it as YYYY-MM-DD"),
    ("experiments:\n  - id: Bad Id\n    salt: s\n    start: 2026-12-01\n    arms: []\n", ":2:", "lowercase letters"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    arms: [{name: x, weight: 1, model: m}]\n",
     ":2:", "at least two arms"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    arms:\n      - {name: x, weight: 1, model: m}\n"
     "      - {name: y, weight: 1, model: m, contact: maybe}\n", ":7:", "must be true or false"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    arms: [{name: x, weight: 1, model: m}, "
     "{name: y, weight: 1, model: m}]\n  - id: a\n    salt: t\n    start: 2026-12-01\n    arms: [{name: x, "
     "weight: 1, model: m}, {name: y, weight: 1, model: m}]\n", ":6:", "declared twice"),
    ("experiments:\n  - id: a\n  salt: [\n", ":3:", "not valid YAML"),
    ("experiments:\n  - id: a\n    salt: s\n    start: 2026-12-01\n    end: 2026-11-01\n    arms: []\n", ":2:",
     "before start"),
])
def test_a_malformed_file_is_refused_with_the_line_and_the_fix(tmp_path, text, where, fix):
    with pytest.raises(ExperimentsError) as raised:
        load_experiments(_file(tmp_path, text))
    message = str(raised.value)
    assert f"experiments.yaml{where}" in message and fix in message, message


def test_experiments_of_one_layer_never_share_a_customer(tmp_path):
    text = EXAMPLE.replace("    arms:", "    layer: retention\n    traffic: [0, 40]\n    arms:", 1) + """\
  - id: email-subject
    salt: s
    start: 2026-12-01
    layer: retention
    traffic: [40, 100]
    arms: [{name: a, weight: 1, model: champion}, {name: b, weight: 1, model: champion}]
"""
    first, second = load_experiments(_file(tmp_path, text)).experiments
    in_first = {cid for cid in IDS if arm_of(first, cid)}
    in_second = {cid for cid in IDS if arm_of(second, cid)}
    assert not in_first & in_second
    assert abs(len(in_first) / len(IDS) - 0.4) < 0.01 and len(in_first) + len(in_second) == len(IDS)
    overlapping = text.replace("traffic: [40, 100]", "traffic: [30, 100]")
    with pytest.raises(ExperimentsError, match="share layer 'retention'.*disjoint ranges"):
        load_experiments(_file(tmp_path, overlapping))
    later = overlapping.replace("start: 2026-12-01\n    layer: retention\n    traffic: [30",
                                "start: 2027-03-01\n    layer: retention\n    traffic: [30")
    later = later.replace("    layer: retention\n    traffic: [0, 40]", "    end: 2027-02-28\n    layer: retention\n"
                                                                        "    traffic: [0, 40]")
    assert len(load_experiments(_file(tmp_path, later)).experiments) == 2  # one after the other: allowed


def test_the_split_check_flags_a_48_52_split_of_100k_and_passes_the_declared_one(tmp_path):
    exp = load_experiments(_file(tmp_path, EXAMPLE.replace("weight: 45", "weight: 50").replace(
        "      - {name: holdout,    weight: 10, model: champion, contact: false}\n", ""))).experiments[0]
    assert sample_ratio_check(exp, {"control": 48_000, "challenger": 52_000}).flagged
    fair = sample_ratio_check(exp, {"control": 50_100, "challenger": 49_900})
    assert not fair.flagged and fair.p_value > 0.5
    assert not sample_ratio_check(exp, {}).flagged  # nobody assigned yet: nothing to judge


def test_sample_size_per_arm_matches_the_two_proportion_formula():
    # 5 % churn, detect a drop to 4 % at alpha 0.05 and power 0.8: 6,745 per arm (standard calculators agree)
    assert sample_size_per_arm(0.05, 0.01) == 6745
    assert sample_size_per_arm(0.05, 0.005) > 4 * 6745 * 0.9  # half the effect: about four times the sample


def test_the_check_cli_shows_the_arms_and_refuses_a_malformed_file(tmp_path, capsys):
    from churn.experiments.cli import main

    good = _file(tmp_path, EXAMPLE.replace("    arms:", "    minimum_detectable_effect: 0.01\n    arms:", 1))
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "holdout" in out and "10.00 %" in out and "6,745 customers per arm" in out and "1 experiment(s) valid" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("weight: 10", "weight: ten"))
    assert main(["check", str(bad)]) == 2
    assert "bad.yaml:8: arm holdout: weight 'ten' must be a positive number" in capsys.readouterr().err
    assert main(["bucket", "boosting-vs-champion", "2026-12", "C00000001"]) == 0
    assert capsys.readouterr().out.strip() == str(TEST_VECTORS[0][3])


def test_the_uplift_interval_and_the_qini_coefficient_on_known_data():
    import numpy as np

    from churn.experiments.analysis import qini_coefficient, uplift

    absolute, relative = uplift(100, 1000, 80, 1000)  # 10 % -> 8 %
    assert absolute.estimate == pytest.approx(0.02)
    se = (0.1 * 0.9 / 1000 + 0.08 * 0.92 / 1000) ** 0.5
    assert (absolute.low, absolute.high) == pytest.approx((0.02 - 1.959964 * se, 0.02 + 1.959964 * se))
    assert relative.estimate == pytest.approx(0.2)
    se_log = (1 / 80 - 1 / 1000 + 1 / 100 - 1 / 1000) ** 0.5  # log risk ratio's standard error
    assert (relative.low, relative.high) == pytest.approx((1 - 0.8 * 2.718281828 ** (1.959964 * se_log),
                                                           1 - 0.8 * 2.718281828 ** (-1.959964 * se_log)), rel=1e-5)
    # scores that rank first the customers the action retains give a positive Qini; reversed, a negative one
    scores = np.linspace(1, 0, 1000)
    treated_retained = (np.arange(1000) < 300).astype(int) | (np.arange(1000) >= 600)
    control_retained = (np.arange(1000) >= 600).astype(int)
    assert qini_coefficient(scores, treated_retained, scores, control_retained) > 0.05
    assert qini_coefficient(-scores, treated_retained, -scores, control_retained) < -0.05


def test_the_analysis_reports_each_arm_and_withholds_results_of_a_broken_split(tmp_path):
    import numpy as np

    from churn.experiments.analysis import analyze

    exp = load_experiments(_file(tmp_path, EXAMPLE)).experiments[0]
    rng = np.random.default_rng(0)
    arms = np.array([arm_of(exp, cid) for cid in IDS[:20_000]])
    p = rng.uniform(0.01, 0.3, len(arms))
    scores = np.clip(p + rng.normal(0, 0.05, len(arms)), 0, 1)
    contacted = arms != "holdout"
    churned = (rng.random(len(arms)) < np.where(contacted, p * 0.7, p)).astype(int)
    result = analyze(exp, arms, scores, churned)
    assert result.withheld is None and [a.arm for a in result.arms] == ["control", "challenger", "holdout"]
    assert all(0.6 < a.roc_auc < 0.9 and a.brier < 0.2 and len(a.reliability) >= 3 for a in result.arms)
    assert [(c.treated, c.holdout) for c in result.comparisons] == [("control", "holdout"), ("challenger", "holdout")]
    assert all(c.uplift.low > 0 and c.relative_uplift.covers(0.3) for c in result.comparisons)
    broken = np.where((arms == "control") & (rng.random(len(arms)) < 0.1), "challenger", arms)
    withheld = analyze(exp, broken, scores, churned)
    assert withheld.split.flagged and "sample ratio mismatch" in withheld.withheld and not withheld.arms


@pytest.mark.parametrize("weights", [(45, 45, 10), (0.45, 0.6, 0.9), (0.1, 0.3333333333333333), (1, 1, 1),
                                     (7, 3), (0.001, 99.999)])
def test_every_bucket_has_exactly_one_arm_whatever_the_weights(weights):
    from churn.experiments.definitions import parse_experiments

    exp = parse_experiments({"experiments": [{
        "id": "w", "salt": "s", "start": "2026-12-01",
        "arms": [{"name": f"a{i}", "weight": w, "model": "champion"} for i, w in enumerate(weights)]}]}).experiments[0]
    bounds = arm_bounds(exp)
    assert bounds[0][1] == 0 and bounds[-1][2] == BUCKETS  # bucket 9999 too
    assert all(high == low for (_, _, high), (_, low, _) in zip(bounds, bounds[1:]))  # contiguous, no overlap


def test_salts_and_ids_must_be_text_and_keys_unique(tmp_path):
    numeric = EXAMPLE.replace('salt: "2026-12"', "salt: 1.10")
    with pytest.raises(ExperimentsError, match=r'experiments.yaml:2: salt 1.1 must be text: quote it'):
        load_experiments(_file(tmp_path, numeric))
    twice = EXAMPLE.replace("    start: 2026-12-01\n", "    start: 2026-12-01\n    start: 2026-12-05\n")
    with pytest.raises(ExperimentsError, match=r"experiments.yaml:2: key\(s\) \['start'\] given twice"):
        load_experiments(_file(tmp_path, twice))


def test_holdouts_of_an_experiment_that_just_ended_stay_out_of_exports():
    from churn.stages.results import ExperimentsResult

    result = ExperimentsResult.from_dict({"experiments": [{"experiment_id": "now", "counts": {"a": 1, "h": 1},
                                                           "new": 0, "p_value": 1.0, "flagged": False,
                                                           "holdout_arms": ["h"]}],
                                          "ended_holdouts": [["before", "holdout"]]})
    assert result.holdouts() == [("now", "h"), ("before", "holdout")]
