"""A person decides an experiment that reached its sample size: promote the winning arm's model, stop, or extend.

The ``churn_experiment_decision`` DAG runs after each night's report: :func:`ready_for_decision` finds the
first experiment of the file whose judged arms all hold the sample size its ``minimum_detectable_effect``
needs (doubled after each *extend*), and the DAG's human-in-the-loop task asks a person with the figures.
:func:`apply_decision` carries the answer out: a promotion goes through the registry
(:func:`churn.model.registry.promote`, kind ``experiment``, with who and why in ``churn.promotions``); every
decision is kept, append-only, in ``churn.experiment_decisions``. A promotion or a stop ends the experiment on
the decision's date (:func:`effective`): it assigns nobody after it, and its holdouts stay out of contact
lists for ``CHURN_REALIZED_LAG_DAYS`` more, as after a declared ``end``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from churn.experiments.definitions import Experiment, ExperimentsError

log = logging.getLogger(__name__)

PROMOTE, STOP, EXTEND = "Promote the winning arm's model", "Stop the experiment", "Extend the experiment"
OPTIONS = [PROMOTE, STOP, EXTEND]
DECISIONS = {PROMOTE: "promote", STOP: "stop", EXTEND: "extend"}


@dataclass
class DecisionRequest:
    """What a person is asked about one experiment (an XCom value: figures and references, no customer data)."""

    experiment_id: str
    scored_on: str
    customers: dict[str, int]
    needed_per_arm: int
    subject: str
    body: str
    winner_arm: str | None = None
    winner_model: str | None = None
    champion: str | None = None
    extends: int = 0
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-able."""
        return dataclasses.asdict(self)


def ended_on(conn) -> dict[str, date]:
    """The date each experiment was ended by a person (a promotion or a stop), from ``churn.experiment_decisions``."""
    from churn.db import tables_present

    if not tables_present(conn, "churn.experiment_decisions"):
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT experiment_id, min(decided_on) FROM churn.experiment_decisions "
                    "WHERE decision IN ('promote', 'stop') GROUP BY 1")
        found = dict(cur.fetchall())
    conn.rollback()
    return found


def effective(experiments: list[Experiment], ends: dict[str, date]) -> list[Experiment]:
    """The experiments with a person's stop or promotion as their end (the earlier of it and the file's)."""
    out = []
    for experiment in experiments:
        stop = ends.get(experiment.id)
        if stop is not None and (experiment.end is None or stop < experiment.end):
            experiment = dataclasses.replace(experiment, end=max(stop, experiment.start))
        out.append(experiment)
    return out


def _latest_result(conn, experiment_id: str):
    with conn.cursor() as cur:
        cur.execute("SELECT scored_on, result FROM churn.experiment_results WHERE experiment_id = %s AND withheld IS "
                    "NULL ORDER BY scored_on DESC LIMIT 1", (experiment_id,))
        row = cur.fetchone()
    conn.rollback()
    return row


def _decisions(conn, experiment_id: str) -> list[tuple[str, date]]:
    with conn.cursor() as cur:
        cur.execute("SELECT decision, scored_on FROM churn.experiment_decisions WHERE experiment_id = %s ORDER BY id",
                    (experiment_id,))
        rows = cur.fetchall()
    conn.rollback()
    return rows


def _served_model(conn, experiment: Experiment, arm: str, scored_on: date) -> str | None:
    """The model version the arm was served on ``scored_on`` (that night's run table, kept for the prediction
    log), else what its ``model`` names now."""
    from churn.experiments.serving import resolve_model
    from churn.model import registry
    from churn.publish.postgres import run_table

    table = run_table(scored_on.isoformat())
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'churn' AND "
                    "table_name = %s AND column_name = 'arm')", (table,))
        if cur.fetchone()[0]:
            cur.execute(f"SELECT DISTINCT model_version FROM churn.{table} WHERE experiment = %s AND arm = %s LIMIT 2",
                        (experiment.id, arm))
            versions = [r[0] for r in cur.fetchall()]
            if len(versions) == 1:
                conn.rollback()
                return versions[0]
    conn.rollback()
    champion = registry.champion(conn)
    return resolve_model(conn, experiment.arm(arm).model, champion, experiment.start).version if champion else None


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ready_for_decision(conn, experiments: list[Experiment]) -> DecisionRequest | None:
    """The first experiment (file order) whose judged arms all reached the sample size and await a decision."""
    from churn.experiments.assignment import sample_size_per_arm
    from churn.model import registry

    ends = ended_on(conn)
    for experiment in experiments:
        if experiment.minimum_detectable_effect is None or experiment.id in ends:
            continue  # no stated effect: no sample size to reach (see the experiments guide)
        latest = _latest_result(conn, experiment.id)
        if latest is None:
            continue
        scored_on, result = latest
        arms = {a["arm"]: a for a in result.get("arms", [])}
        holdouts = [a.name for a in experiment.arms if not a.contact and a.name in arms]
        rates = [arms[h]["churn_rate"] for h in holdouts] or [a["churn_rate"] for a in arms.values()]
        rates = [r for r in rates if r is not None]
        if not arms or not rates:
            continue
        needed = sample_size_per_arm(min(max(sum(rates) / len(rates), 1e-6), 1 - 1e-6),
                                     experiment.minimum_detectable_effect)
        previous = _decisions(conn, experiment.id)
        if any(on == scored_on for _, on in previous):
            continue  # asked and answered for this night already
        extends = sum(d == "extend" for d, _ in previous)
        customers = {name: int(a["customers"]) for name, a in arms.items()}
        if min(customers.values()) < needed * 2 ** extends:
            continue
        champion = registry.champion(conn)
        winner = winner_model = None
        contact = [a.name for a in experiment.arms if a.contact and arms.get(a.name, {}).get("roc_auc") is not None]
        if experiment.varies_model and contact:
            winner = max(contact, key=lambda name: arms[name]["roc_auc"])
            winner_model = _served_model(conn, experiment, winner, scored_on)
        elif result.get("comparisons"):
            best = max(result["comparisons"], key=lambda c: c["uplift"]["estimate"] or float("-inf"))
            winner = best["treated"]
        lines = [f"Experiment `{experiment.id}` was judged on the night of {scored_on}: every arm holds at least "
                 f"{needed * 2 ** extends:,} customers (the sample size for an absolute effect of "
                 f"{experiment.minimum_detectable_effect} at a churn rate of {sum(rates) / len(rates):.3f}"
                 + (f", doubled for each of {extends} extension(s)" if extends else "") + ").", "",
                 "| arm | customers | churn rate | ROC AUC | Brier | top-10 % precision |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, a in arms.items():
            lines.append(f"| `{name}` | {a['customers']:,} | {_fmt(a['churn_rate'])} | {_fmt(a['roc_auc'])} | "
                         f"{_fmt(a['brier'])} | {_fmt(a.get('top_k_precision'))} |")
        for c in result.get("comparisons", []):
            u = c["uplift"]
            lines.append(f"\nUplift of `{c['treated']}` against `{c['holdout']}`: {_fmt(u['estimate'])} "
                         f"(95 % CI {_fmt(u['low'])} to {_fmt(u['high'])}), Qini {_fmt(c['qini'])}.")
        if winner_model and champion and winner_model != champion.version:
            lines.append(f"\n**{PROMOTE}** makes `{winner_model}` (arm `{winner}`, best realized ROC AUC) the "
                         f"champion in place of `{champion.version}`, recorded in the registry's history; it ends "
                         "the experiment.")
        else:
            lines.append(f"\n**{PROMOTE}** does not apply: " + (
                f"the best arm `{winner}` is served the champion already." if winner_model else
                "no arm is served another model than the champion.") + " Choose stop or extend.")
        lines.append(f"**{STOP}** ends it tonight (holdouts stay out of contact lists for the label lag). "
                     f"**{EXTEND}** asks again when every arm holds twice as many customers.")
        return DecisionRequest(
            experiment_id=experiment.id, scored_on=scored_on.isoformat(), customers=customers, needed_per_arm=needed,
            subject=f"Experiment {experiment.id} reached its sample size: promote, stop or extend?",
            body="\n".join(lines), winner_arm=winner, winner_model=winner_model,
            champion=champion.version if champion else None, extends=extends,
            figures={"arms": list(arms.values()), "comparisons": result.get("comparisons", [])})
    return None


def apply_decision(conn, request: dict, chosen: list[str], decided_by: str, today: date) -> dict:
    """Carry out a person's answer to ``request``; a retry of the same answer records and promotes nothing twice."""
    from churn.model import registry

    req = DecisionRequest(**request)
    if len(chosen) != 1 or chosen[0] not in DECISIONS:
        raise ExperimentsError(f"answer {chosen!r} is not one of {OPTIONS}: clear the decide task to ask again")
    decision = DECISIONS[chosen[0]]
    with conn.cursor() as cur:
        cur.execute("SELECT decision, model_version FROM churn.experiment_decisions WHERE experiment_id = %s AND "
                    "scored_on = %s", (req.experiment_id, req.scored_on))
        done = cur.fetchone()
    conn.rollback()
    if done is not None:
        log.info("experiment %s: the decision for %s is recorded already (%s)", req.experiment_id, req.scored_on,
                 done[0])
        return {"experiment_id": req.experiment_id, "decision": done[0], "model_version": done[1], "repeated": True}
    arm = version = None
    reason = f"decided by {decided_by} on experiment {req.experiment_id}'s results of {req.scored_on}"
    if decision == "promote":
        if not req.winner_model or req.winner_model == req.champion:
            raise ExperimentsError(
                f"experiment {req.experiment_id}: no arm is served another model than the champion, so there is "
                "nothing to promote; clear the decide task and choose stop or extend")
        current = registry.champion(conn)
        promoted_already = current is not None and current.version == req.winner_model  # a retry after promote
        if not promoted_already and (current is None or current.version != req.champion):
            raise ExperimentsError(
                f"experiment {req.experiment_id}: the champion changed from {req.champion} to "
                f"{current.version if current else None} since the question was asked, so the answer was not applied; "
                "the next churn_experiment_decision run asks again with tonight's champion")
        arm, version = req.winner_arm, req.winner_model
        reason = (f"experiment {req.experiment_id}: arm {arm} had the best realized ROC AUC on {req.scored_on} "
                  f"({req.customers}); {reason}")
        if not promoted_already:
            registry.promote(conn, version, reason, kind="experiment", actor=decided_by)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO churn.experiment_decisions (experiment_id, decided_on, decision, arm, model_version, "
                    "decided_by, scored_on, customers, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (req.experiment_id, today, decision, arm, version, decided_by, req.scored_on,
                     json.dumps(req.customers), reason))
    conn.commit()
    log.info("experiment %s: %s (%s)", req.experiment_id, decision, reason)
    return {"experiment_id": req.experiment_id, "decision": decision, "model_version": version, "repeated": False}
