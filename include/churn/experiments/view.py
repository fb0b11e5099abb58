"""What the Churn page shows of experiments and trends: read from the platform's tables, drawn as inline SVG.

:func:`load_trends` -- realized ROC AUC per model version over the judged nights, the score distribution of
the last runs, the largest feature drift (PSI) per run. :func:`load_experiments` -- each experiment's arms and
their latest split check, each arm's realized ROC AUC and each contact arm's uplift against its holdout with
the 95 % interval over the judged nights, and the decisions taken.
"""

from __future__ import annotations

from typing import Any

from churn.charts import Series, line_chart
from churn.db import tables_present


def _rows(conn, sql: str, params: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.commit()
    return rows


def load_trends(conn, runs: int = 30) -> dict[str, Any]:
    """The overview's three trend charts (SVG) from realized performance, run metrics and drift metrics."""
    charts: dict[str, Any] = {}
    if tables_present(conn, "churn.realized_performance"):
        rows = _rows(conn, "SELECT scored_run_key, model_version, realized_roc_auc FROM churn.realized_performance "
                           "ORDER BY scored_run_key DESC LIMIT %s", (runs * 4,))
        nights = sorted({r[0] for r in rows})
        by_model: dict[str, Series] = {}
        for night, version, auc in rows:
            by_model.setdefault(version, Series(version)).points[night] = (auc, None, None)
        charts["realized"] = line_chart(list(by_model.values()), nights, title="Realized ROC AUC per model version",
                                        y_label="ROC AUC")
    if tables_present(conn, "churn.run_metrics"):
        rows = list(reversed(_rows(conn, "SELECT run_key, score_summary FROM churn.run_metrics WHERE score_summary "
                                         "IS NOT NULL AND NOT dry_run ORDER BY run_key DESC LIMIT 5")))
        bins: list[str] = []
        series = []
        for run_key, summary in rows:
            edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
            bins = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in range(len(counts))]
            total = sum(counts) or 1
            series.append(Series(run_key, {b: (c / total, None, None) for b, c in zip(bins, counts)}))
        charts["scores"] = line_chart(series, bins, title="Score distribution of the last runs (share per bin)",
                                      y_label="share", y_range=(0.0, max([1e-9] + [p[0] for s in series for p in
                                                                                    s.points.values()])))
    if tables_present(conn, "churn.drift_metrics"):
        rows = list(reversed(_rows(conn, "SELECT run_key, max(psi) FROM churn.drift_metrics GROUP BY run_key "
                                         "ORDER BY run_key DESC LIMIT %s", (runs,))))
        charts["drift"] = line_chart([Series("largest feature PSI", {r: (v, None, None) for r, v in rows})],
                                     [r for r, _ in rows], title="Feature drift per run (largest PSI)", y_label="PSI")
    return charts


def load_experiments(conn, nights: int = 60) -> list[dict[str, Any]]:
    """Every experiment with a recorded split: arms and sizes, the split check, metric charts, decisions."""
    if not tables_present(conn, "churn.experiment_splits", "churn.experiment_results"):
        return []
    decisions_present = tables_present(conn, "churn.experiment_decisions")
    out = []
    for (experiment_id,) in _rows(conn, "SELECT DISTINCT experiment_id FROM churn.experiment_splits ORDER BY 1"):
        night, counts, new, p_value, flagged = _rows(
            conn, "SELECT night, counts, new_customers, p_value, flagged FROM churn.experiment_splits WHERE "
                  "experiment_id = %s ORDER BY night DESC LIMIT 1", (experiment_id,))[0]
        results = list(reversed(_rows(
            conn, "SELECT scored_on, withheld, result FROM churn.experiment_results WHERE experiment_id = %s "
                  "ORDER BY scored_on DESC LIMIT %s", (experiment_id, nights))))
        labels = [str(r[0]) for r in results]
        auc: dict[str, Series] = {}
        uplift: dict[str, Series] = {}
        for scored_on, withheld, result in results:
            if withheld:
                continue
            for arm in result.get("arms", []):
                auc.setdefault(arm["arm"], Series(arm["arm"])).points[str(scored_on)] = (arm.get("roc_auc"), None, None)
            for c in result.get("comparisons", []):
                u = c["uplift"]
                name = f"{c['treated']} vs {c['holdout']}"
                uplift.setdefault(name, Series(name)).points[str(scored_on)] = (u.get("estimate"), u.get("low"),
                                                                                u.get("high"))
        decisions = _rows(conn, "SELECT decided_at, decision, arm, model_version, decided_by FROM "
                                "churn.experiment_decisions WHERE experiment_id = %s ORDER BY id",
                          (experiment_id,)) if decisions_present else []
        out.append({
            "id": experiment_id, "night": night, "counts": counts, "new": new, "p_value": p_value, "flagged": flagged,
            "withheld": [(str(r[0]), r[1]) for r in results if r[1]][-3:],
            "auc_chart": line_chart(list(auc.values()), labels, title="Realized ROC AUC per arm", y_label="ROC AUC"),
            "uplift_chart": line_chart(list(uplift.values()), labels,
                                       title="Uplift in churn rate against the holdout (95 % interval)",
                                       y_label="holdout - arm"),
            "decisions": [{"at": str(r[0])[:19], "decision": r[1], "arm": r[2], "model_version": r[3], "by": r[4]}
                          for r in decisions],
        })
    return out
