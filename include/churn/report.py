"""One self-contained HTML report per run: figures, tables and plots as inline SVG (matplotlib Agg).

:func:`build_report` turns a run's reference dicts (summary, stage outputs, monitoring
figures) into HTML; :func:`write_report` writes it atomically to ``<run_dir>/report.html``.
Missing parts (no retrain, no drift stage, no Data Docs, first run) render as a note,
never as an error, so a report is always produced.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from churn.fileio import write_text_atomic
from churn.templating import trusted

STAGE_ORDER = ["ingested", "validated", "splits", "drift", "trained", "evaluation", "registered", "scored",
               "pg_published", "redis_published", "exported", "summarize"]

def _svg(fig) -> str:
    """Serialise a matplotlib figure as inline SVG (no external files)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is embedded in HTML


def _figure(width: float = 4.6, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless workers: never a GUI backend
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(alpha=0.3)
    return fig, ax


def _model_curves(evaluation: dict) -> list[tuple[str, dict]]:
    """(label, metrics) of every candidate plus the champion on the same test rows."""
    curves = [(f"{c['name']} (candidate)", c.get("metrics") or {}) for c in evaluation.get("candidates", [])]
    if evaluation.get("champion_metrics"):
        curves.append((f"{evaluation.get('champion_version')} (champion)", evaluation["champion_metrics"]))
    return curves


def _plot_curves(curves: list[tuple[str, dict]], points, *, axes: dict, legend: str, diagonal: bool = False,
                 baseline: float | None = None, **style) -> str:
    """One line per model: ``points(metrics)`` gives (x, y, label suffix) or None; the reference line; the SVG."""
    fig, ax = _figure()
    for label, metrics in curves:
        found = points(metrics)
        if found:
            ax.plot(found[0], found[1], label=f"{label}{found[2]}", **style)
    if diagonal:
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="grey", linewidth=0.8)
    ax.set(**axes)
    ax.legend(fontsize=7, loc=legend)
    return _svg(fig)


def plot_roc(curves: list[tuple[str, dict]]) -> str:
    """ROC curves as SVG."""
    def points(m: dict):
        roc = m.get("roc_curve")
        return roc and (roc["fpr"], roc["tpr"], f" AUC {m.get('roc_auc', float('nan')):.3f}")
    return _plot_curves(curves, points, diagonal=True, legend="lower right",
                        axes={"xlabel": "false positive rate", "ylabel": "true positive rate", "title": "ROC"})


def plot_pr(curves: list[tuple[str, dict]]) -> str:
    """Precision-recall curves as SVG (the dashed line is the churn base rate)."""
    def points(m: dict):
        pr = m.get("pr_curve")
        return pr and (pr["recall"], pr["precision"], f" AP {m.get('pr_auc', float('nan')):.3f}")
    base = next((m.get("base_rate") for _, m in curves if m.get("base_rate") is not None), None)
    return _plot_curves(curves, points, baseline=base, legend="upper right",
                        axes={"xlabel": "recall", "ylabel": "precision", "title": "Precision-recall", "ylim": (0, 1.02)})


def plot_calibration(curves: list[tuple[str, dict]]) -> str:
    """Reliability diagram (mean predicted vs observed churn rate per bin) as SVG."""
    def points(m: dict):
        cal = m.get("calibration") or []
        return cal and ([b["mean_predicted"] for b in cal], [b["observed_rate"] for b in cal], "")
    return _plot_curves(curves, points, diagonal=True, legend="upper left", marker="o", markersize=3,
                        axes={"xlabel": "mean predicted probability", "ylabel": "observed churn rate",
                              "title": "Calibration"})


def plot_score_distribution(current: dict, previous: dict | None, previous_key: str | None) -> str:
    """Score histogram (share per 0.1 bin) of this run against the previous run's, as SVG."""
    import numpy as np

    fig, ax = _figure(6.0, 3.2)
    edges = np.asarray(current["histogram"]["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) * 0.4
    cur = np.asarray(current["histogram"]["counts"], dtype=float)
    ax.bar(centers + (width / 2 if previous else 0), cur / cur.sum(), width=width, label="this run")
    if previous:
        prev = np.asarray(previous["histogram"]["counts"], dtype=float)
        ax.bar(centers - width / 2, prev / prev.sum(), width=width, label=f"previous run ({previous_key})", alpha=0.7)
    ax.set(xlabel="churn probability", ylabel="share of customers", title="Score distribution")
    ax.legend(fontsize=7)
    return _svg(fig)


def stage_timings(summary: dict) -> dict:
    """Seconds per stage of a run summary (``stage_timings``; summaries stored before it named them ``stage_seconds``)."""
    timings = summary.get("stage_timings")
    if timings is None and isinstance(summary.get("stage_seconds"), dict):
        timings = summary["stage_seconds"]
    return dict(timings or {})


def plot_stage_timings(stage_seconds: dict[str, float]) -> str:
    """Horizontal bars of seconds per stage, as SVG."""
    fig, ax = _figure(6.0, 0.35 * max(len(stage_seconds), 3) + 0.8)
    names = list(stage_seconds)
    ax.barh(names[::-1], [stage_seconds[n] for n in names][::-1])
    ax.set(xlabel="seconds", title="Stage timings")
    return _svg(fig)


def plot_feature_drift(values: dict[str, float], threshold: float | None) -> str:
    """Per-feature drift values as bars (with the alert threshold), as SVG."""
    fig, ax = _figure(6.0, 0.3 * max(len(values), 3) + 0.8)
    names = sorted(values, key=lambda k: values[k])
    ax.barh(names, [values[n] for n in names])
    if threshold is not None:
        ax.axvline(threshold, linestyle="--", color="#b42318", linewidth=0.9, label=f"threshold {threshold}")
        ax.legend(fontsize=7)
    ax.set(xlabel="drift (PSI)", title="Drift per feature")
    return _svg(fig)


def _rows_section(summary: dict, stages: dict) -> dict:
    ingested = summary.get("rows_ingested") or {}
    quarantined = summary.get("rows_quarantined") or {}
    validated = summary.get("rows_validated") or {}
    return {
        "datasets": [[dataset, ingested.get(dataset), validated.get(dataset), quarantined.get(dataset)]
                     for dataset in sorted(set(ingested) | set(quarantined))],
        "outputs": [["scored", summary.get("scored")], ["published to Postgres", summary.get("published_postgres")],
                    ["published to Redis", summary.get("published_redis")], ["exported", summary.get("export_rows")]],
        "skipped": [f"{name}: {value.get('reason')}" for name, value in stages.items()
                    if isinstance(value, dict) and value.get("skipped")],
    }


def _validation_section(stages: dict, data_docs_href: Any) -> dict:
    """Per dataset: the validate stage's ValidationOutcome fields; Data Docs links from ``data_docs_path``."""
    validated = stages.get("validated") or {}
    rows, links = [], []
    for dataset, outcome in validated.items():
        if not isinstance(outcome, dict):
            continue
        ok = outcome.get("success")
        detail = "; ".join([*outcome.get("batch_failures", []),
                            *(f"{k}: {v}" for k, v in (outcome.get("row_failures") or {}).items())])
        rows.append([dataset, "passed" if ok else ("failed" if ok is not None else "–"), outcome.get("rows_checked"),
                     outcome.get("rows_quarantined"), detail])
        if outcome.get("data_docs_path"):
            links.append((dataset, outcome["data_docs_path"]))
    if isinstance(validated.get("data_docs_path"), str):
        links.insert(0, ("index", validated["data_docs_path"]))
    return {"rows": rows, "links": [(name, data_docs_href(path) if data_docs_href else path) for name, path in links]}


def _drift_section(drift: dict | None) -> dict:
    """The drift stage's ``features`` ({feature: {"psi": ..}}) and ``threshold`` (a DriftReport as a dict)."""
    features = (drift or {}).get("features") or {}
    if not features:
        reason = (drift or {}).get("reason") or "no drift stage output"
        return {"rows": [], "note": f"no feature drift computed for this run ({reason})"}
    threshold = drift.get("threshold")
    values = {name: float(item["psi"]) for name, item in features.items() if item.get("psi") is not None}
    rows = [[name, values.get(name), "–" if threshold is None or name not in values
             else ("yes" if values[name] > threshold else "no")] for name in sorted(features)]
    return {"rows": rows, "plot": trusted(plot_feature_drift(values, threshold)) if values else ""}


def _models_section(stages: dict, summary: dict) -> dict:
    evaluation = stages.get("evaluation") or {}
    if not evaluation.get("evaluated"):
        return {"evaluated": False, "reason": evaluation.get("reason") or summary.get("retrain_reason") or ""}
    keys = ["roc_auc", "pr_auc", "log_loss", "brier", "top_decile_lift", "top_decile_capture", "test_rows"]
    curves = _model_curves(evaluation)
    gate = summary.get("gate") or {"promote": evaluation.get("promote"), "reason": evaluation.get("reason")}
    registered = (stages.get("registered") or {}).get("registered") or []
    return {"evaluated": True, "challenger": evaluation.get("challenger"), "promote": bool(gate.get("promote")),
            "reason": gate.get("reason"), "metric_keys": keys,
            "metric_rows": [[label] + [m.get(k) for k in keys] for label, m in curves],
            "registered": [[r.get("version"), r.get("status"), r.get("test_roc_auc"), r.get("reason")]
                           for r in registered],
            "plots": [trusted(fn(curves)) for fn in (plot_roc, plot_pr, plot_calibration)]}


def _scores_section(monitoring: dict) -> dict | None:
    current = monitoring.get("score_summary")
    if not current:
        return None
    previous = monitoring.get("previous_score_summary")

    def row(label: str, summary: dict) -> list:
        q = summary["quantiles"]
        return [label, summary["count"], summary["mean"], q["p10"], q["p50"], q["p90"],
                ", ".join(f"{k} {v:.1%}" for k, v in summary["band_shares"].items())]

    rows = [row("this run", current)]
    if previous:
        rows.append(row(f"previous ({monitoring.get('previous_run_key')})", previous))
    return {"psi": monitoring.get("prediction_psi"), "threshold": monitoring.get("max_prediction_psi"),
            "previous_key": monitoring.get("previous_run_key"), "rows": rows,
            "plot": trusted(plot_score_distribution(current, previous, monitoring.get("previous_run_key")))}


def _experiments_section(stages: dict, judged: list | None) -> dict:
    """Tonight's split of every active experiment and the experiments judged tonight (analysis results)."""
    assigned = stages.get("experiments") or {}
    splits = [[e["experiment_id"], ", ".join(f"{arm} {n:,}" for arm, n in e["counts"].items()), e["new"],
               e["p_value"], "split broken: results withheld" if e["flagged"] else "ok",
               ", ".join(e.get("holdout_arms") or []) or "-"] for e in assigned.get("experiments") or []]
    results = []
    for analysis in judged or []:
        if analysis.withheld:
            results.append([analysis.experiment_id, "-", "-", "-", analysis.withheld])
            continue
        arms = "; ".join(f"{a.arm}: churn {a.churn_rate:.2%}, ROC AUC "
                         f"{'-' if a.roc_auc is None else f'{a.roc_auc:.3f}'}" for a in analysis.arms)
        for c in analysis.comparisons or [None]:
            results.append([analysis.experiment_id, arms,
                            "-" if c is None else f"{c.treated} vs {c.holdout}",
                            "-" if c is None else (f"{c.uplift.estimate:+.2%} [{c.uplift.low:+.2%}, "
                                                   f"{c.uplift.high:+.2%}]"),
                            "-" if c is None else f"Qini {c.qini:.4f}"])
    return {"skipped": assigned.get("reason") if assigned.get("skipped") else None, "splits": splits,
            "results": results}


def build_report(run: dict, summary: dict, stages: dict, monitoring: dict | None = None,
                 realized: list[dict] | None = None, data_docs_href: Any = None,
                 experiments: list | None = None) -> str:
    """The run's HTML report (templates/report.html; self-contained: inline CSS and SVG, no external requests).

    ``experiments``: the analyses judged tonight (:func:`churn.experiments.realized.evaluate_experiments`).
    """
    from churn.templating import render

    monitoring = monitoring or {}
    params = run.get("params") or {}
    stage_seconds = {k: v for k, v in stage_timings(summary).items() if isinstance(v, (int, float))}
    ordered = {k: stage_seconds[k] for k in STAGE_ORDER if k in stage_seconds}
    ordered.update({k: v for k, v in stage_seconds.items() if k not in ordered})
    kpis = [("customers scored", summary.get("scored")), ("published", summary.get("published_postgres")),
            ("champion", summary.get("champion")), ("champion test ROC AUC", summary.get("champion_test_roc_auc")),
            ("prediction PSI", monitoring.get("prediction_psi"))]
    return render(
        "report.html", title=f"Churn run {run.get('run_key')}", airflow_run_id=run.get("airflow_run_id"),
        params_text=", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, "")) or "defaults",
        dry_run=bool(params.get("dry_run")), kpis=kpis, rows=_rows_section(summary, stages),
        validation=_validation_section(stages, data_docs_href),
        drift=_drift_section(stages.get("drift") or summary.get("drift")),
        models=_models_section(stages, summary), scores=_scores_section(monitoring),
        realized=[[r["scored_run_key"], r["model_version"], r["customers"], r["churned"], r["realized_roc_auc"],
                   r.get("expected_roc_auc")] for r in realized or []],
        experiments=_experiments_section(stages, experiments),
        timings={"rows": [[k, v] for k, v in ordered.items()],
                 "plot": trusted(plot_stage_timings(ordered)) if ordered else ""},
    )


def write_report(path: str | Path, content: str) -> str:
    """Write the report atomically (readers never see a half-written file); returns the path."""
    return str(write_text_atomic(path, content))
