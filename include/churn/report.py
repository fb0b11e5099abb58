"""One self-contained HTML report per run: figures, tables and plots as inline SVG (matplotlib Agg).

:func:`build_report` turns a run's reference dicts (summary, stage outputs, monitoring
figures) into HTML; :func:`write_report` writes it atomically to ``<run_dir>/report.html``.
Missing parts (no retrain, no drift stage, no Data Docs, first run) render as a note,
never as an error, so a report is always produced.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from churn.fileio import write_text_atomic

STAGE_ORDER = ["ingested", "validated", "splits", "drift", "trained", "evaluation", "registered", "scored",
               "pg_published", "redis_published", "exported", "summarize"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #d9e2ec;padding:4px 8px;text-align:left}
th{background:#f0f4f8} .note{color:#627d98;font-style:italic} .bad{color:#b42318;font-weight:600}
.ok{color:#067647;font-weight:600} .grid{display:flex;flex-wrap:wrap;gap:12px} .grid>div{flex:1 1 360px}
.kpi{display:inline-block;margin:0 18px 8px 0} .kpi b{display:block;font-size:20px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value if value is not None else "–")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


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


def plot_roc(curves: list[tuple[str, dict]]) -> str:
    """ROC curves as SVG."""
    fig, ax = _figure()
    for label, metrics in curves:
        roc = metrics.get("roc_curve")
        if roc:
            ax.plot(roc["fpr"], roc["tpr"], label=f"{label} AUC {metrics.get('roc_auc', float('nan')):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def plot_pr(curves: list[tuple[str, dict]]) -> str:
    """Precision-recall curves as SVG."""
    fig, ax = _figure()
    for label, metrics in curves:
        pr = metrics.get("pr_curve")
        if pr:
            ax.plot(pr["recall"], pr["precision"], label=f"{label} AP {metrics.get('pr_auc', float('nan')):.3f}")
    base = next((m.get("base_rate") for _, m in curves if m.get("base_rate") is not None), None)
    if base is not None:
        ax.axhline(base, linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper right")
    return _svg(fig)


def plot_calibration(curves: list[tuple[str, dict]]) -> str:
    """Reliability diagram (mean predicted vs observed churn rate per bin) as SVG."""
    fig, ax = _figure()
    for label, metrics in curves:
        cal = metrics.get("calibration") or []
        if cal:
            ax.plot([b["mean_predicted"] for b in cal], [b["observed_rate"] for b in cal], marker="o", markersize=3,
                    label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed churn rate", title="Calibration")
    ax.legend(fontsize=7, loc="upper left")
    return _svg(fig)


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


def _feature_drift_values(drift: dict) -> tuple[dict[str, float], dict[str, dict], float | None]:
    """Pull {feature: value} out of the drift stage's dict, whatever its exact shape."""
    features = drift.get("features") or drift.get("per_feature") or drift.get("psi") or {}
    if isinstance(features, list):  # [{"feature": .., "psi": ..}, ...]
        features = {str(f.get("feature") or f.get("name")): f for f in features if isinstance(f, dict)}
    values, details = {}, {}
    for name, item in features.items():
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            values[name] = float(item)
            details[name] = {"value": float(item)}
        elif isinstance(item, dict):
            number = next((item[k] for k in ("psi", "value", "score", "statistic", "drift") if
                           isinstance(item.get(k), (int, float)) and not isinstance(item.get(k), bool)), None)
            if number is not None:
                values[name] = float(number)
            details[name] = item
    threshold = drift.get("threshold") or drift.get("psi_threshold")
    return values, details, threshold if isinstance(threshold, (int, float)) else None


def _section_rows(summary: dict, stages: dict) -> str:
    ingested = summary.get("rows_ingested") or {}
    quarantined = summary.get("rows_quarantined") or {}
    validated = summary.get("rows_validated") or {}
    rows = [[dataset, ingested.get(dataset), validated.get(dataset), quarantined.get(dataset)]
            for dataset in sorted(set(ingested) | set(quarantined))]
    parts = [_table(["dataset", "rows in", "valid", "quarantined"], rows)]
    published = [["scored", summary.get("scored")], ["published to Postgres", summary.get("published_postgres")],
                 ["published to Redis", summary.get("published_redis")], ["exported", summary.get("export_rows")]]
    parts.append(_table(["output", "rows"], published))
    skipped = [f"{name}: {value.get('reason')}" for name, value in stages.items()
               if isinstance(value, dict) and value.get("skipped")]
    if skipped:
        parts.append(_note("skipped: " + "; ".join(skipped)))
    return "".join(parts)


def _section_validation(stages: dict, data_docs_href: Any) -> str:
    validated = stages.get("validated") or {}
    rows, links = [], []
    for dataset, outcome in validated.items():
        if not isinstance(outcome, dict):
            continue
        ok = outcome.get("success")
        rows.append([dataset, "passed" if ok else ("failed" if ok is not None else "–"), outcome.get("rows_checked"),
                     outcome.get("rows_quarantined"), outcome.get("summary") or outcome.get("message") or ""])
        docs = outcome.get("data_docs") or outcome.get("data_docs_path") or outcome.get("data_docs_url")
        if docs:
            links.append((dataset, docs))
    for key in ("data_docs_path", "data_docs"):
        if isinstance(validated.get(key), str):
            links.insert(0, ("index", validated[key]))
            break
    out = _table(["dataset", "result", "rows checked", "quarantined", "detail"], rows) if rows else \
        _note("no validation results in this run")
    if links:
        out += "<p>Great Expectations Data Docs: " + ", ".join(
            f'<a href="{_e(data_docs_href(path) if data_docs_href else path)}">{_e(dataset)}</a>'
            for dataset, path in links) + "</p>"
    else:
        out += _note("no GX Data Docs were built for this run")
    return out


def _section_drift(stages: dict, summary: dict) -> str:
    drift = stages.get("drift") or summary.get("drift")
    if not isinstance(drift, dict) or not drift:
        return _note("no feature drift computed for this run (no drift stage output)")
    values, details, threshold = _feature_drift_values(drift)
    if not details:
        return _table(["key", "value"], [[k, v] for k, v in drift.items() if not isinstance(v, (dict, list))])
    rows = []
    for name, item in sorted(details.items()):
        flag = item.get("drifted") if isinstance(item, dict) else None
        if flag is None and threshold is not None and name in values:
            flag = values[name] > threshold
        rows.append([name, values.get(name), "yes" if flag else ("no" if flag is not None else "–")])
    plot = plot_feature_drift(values, threshold) if values else ""
    return f'<div class="grid"><div>{_table(["feature", "drift", "drifted"], rows)}</div><div>{plot}</div></div>'


def _section_models(stages: dict, summary: dict) -> str:
    evaluation = stages.get("evaluation") or {}
    if not evaluation.get("evaluated"):
        return _note(f"no training in this run: {evaluation.get('reason') or summary.get('retrain_reason') or ''}")
    keys = ["roc_auc", "pr_auc", "log_loss", "brier", "top_decile_lift", "top_decile_capture", "test_rows"]
    curves = _model_curves(evaluation)
    rows = [[label] + [m.get(k) for k in keys] for label, m in curves]
    gate = summary.get("gate") or {"promote": evaluation.get("promote"), "reason": evaluation.get("reason")}
    verdict = '<span class="ok">promoted</span>' if gate.get("promote") else '<span class="bad">not promoted</span>'
    registered = (stages.get("registered") or {}).get("registered") or []
    reg_rows = [[r.get("version"), r.get("status"), r.get("test_roc_auc"), r.get("reason")] for r in registered]
    plots = "".join(f"<div>{fn(curves)}</div>" for fn in (plot_roc, plot_pr, plot_calibration))
    return (f"<p>Challenger <b>{_e(evaluation.get('challenger'))}</b>: {verdict}: {_e(gate.get('reason'))}</p>"
            + _table(["model"] + keys, rows)
            + (_table(["version", "status", "test ROC AUC", "reason"], reg_rows) if reg_rows else "")
            + f'<div class="grid">{plots}</div>')


def _section_scores(monitoring: dict) -> str:
    current = monitoring.get("score_summary")
    if not current:
        return _note("no scores in this run")
    previous = monitoring.get("previous_score_summary")
    drift = monitoring.get("prediction_psi")
    threshold = monitoring.get("max_prediction_psi")
    flag = ""
    if drift is not None and threshold is not None:
        flag = f' <span class="{"bad" if drift > threshold else "ok"}">({"above" if drift > threshold else "within"}' \
               f" threshold {threshold})</span>"
    head = (f"<p>Prediction drift (PSI vs {_e(monitoring.get('previous_run_key'))}): <b>{_fmt(drift)}</b>{flag}</p>"
            if drift is not None else _note("first run with scores: no previous run to compare with"))
    q = current["quantiles"]
    rows = [["this run", current["count"], current["mean"], q["p10"], q["p50"], q["p90"],
             ", ".join(f"{k} {v:.1%}" for k, v in current["band_shares"].items())]]
    if previous:
        pq = previous["quantiles"]
        rows.append([f"previous ({monitoring.get('previous_run_key')})", previous["count"], previous["mean"],
                     pq["p10"], pq["p50"], pq["p90"],
                     ", ".join(f"{k} {v:.1%}" for k, v in previous["band_shares"].items())])
    return (head + _table(["run", "customers", "mean", "p10", "median", "p90", "risk bands"], rows)
            + plot_score_distribution(current, previous, monitoring.get("previous_run_key")))


def _section_realized(realized: list[dict]) -> str:
    if not realized:
        return _note("no outcomes yet for customers scored a label window ago")
    return _table(["scored on", "model", "customers", "churned", "realized ROC AUC", "test ROC AUC"],
                  [[r["scored_run_key"], r["model_version"], r["customers"], r["churned"], r["realized_roc_auc"],
                    r.get("expected_roc_auc")] for r in realized])


def build_report(run: dict, summary: dict, stages: dict, monitoring: dict | None = None,
                 realized: list[dict] | None = None, data_docs_href: Any = None) -> str:
    """The run's HTML report (self-contained: inline CSS and SVG plots, no external requests)."""
    monitoring = monitoring or {}
    params = run.get("params") or {}
    stage_seconds = {k: v for k, v in (summary.get("stage_seconds") or {}).items() if isinstance(v, (int, float))}
    ordered = {k: stage_seconds[k] for k in STAGE_ORDER if k in stage_seconds}
    ordered.update({k: v for k, v in stage_seconds.items() if k not in ordered})
    kpis = [("customers scored", summary.get("scored")), ("published", summary.get("published_postgres")),
            ("champion", summary.get("champion")), ("champion test ROC AUC", summary.get("champion_test_roc_auc")),
            ("prediction PSI", monitoring.get("prediction_psi"))]
    title = f"Churn run {run.get('run_key')}"
    sections = [
        ("Rows: in, quarantined, published", _section_rows(summary, stages)),
        ("Validation", _section_validation(stages, data_docs_href)),
        ("Feature drift", _section_drift(stages, summary)),
        ("Challenger vs champion", _section_models(stages, summary)),
        ("Score distribution", _section_scores(monitoring)),
        ("Realized performance", _section_realized(realized or [])),
        ("Stage timings", (plot_stage_timings(ordered) + _table(["stage", "seconds"], [[k, v] for k, v in
                                                                                       ordered.items()]))
         if ordered else _note("no stage timings")),
    ]
    params_text = ", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, "")) or "defaults"
    body = "".join(f"<h2>{_e(name)}</h2>{content}" for name, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{_e(title)}</h1><p>Airflow run <code>{_e(run.get('airflow_run_id'))}</code>; "
        f"parameters: {_e(params_text)}{' · <b>DRY RUN: nothing published</b>' if params.get('dry_run') else ''}</p>"
        + "".join(f'<span class="kpi">{_e(k)}<b>{_fmt(v)}</b></span>' for k, v in kpis)
        + body + "</body></html>"
    )


def write_report(path: str | Path, content: str) -> str:
    """Write the report atomically (readers never see a half-written file); returns the path."""
    return str(write_text_atomic(path, content))
