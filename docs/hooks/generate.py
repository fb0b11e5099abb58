"""MkDocs hook: the parts of the docs site that are generated from the code and the benchmark results.

Registered in ``mkdocs.yml`` (``hooks:``). At build time it replaces, in any page:

- ``<!-- generated: configuration -->`` with the configuration reference: every ``CHURN_*`` setting of
  ``churn.config.ChurnConfig`` (rows from ``churn.config_docs.markdown_table``), grouped by its sections
  (``ChurnConfig.sections()``), with the values each one allows and the former names still read;
- ``<!-- generated: cli -->`` with the CLI reference: the ``--help`` of every project CLI and of each of its
  sub-commands, read from the argparse parsers (``build_parser()``, else the parser ``main()`` builds);
- ``<!-- generated: benchmarks -->`` with tables of every ``bench/results/*.json`` file and its date;
- ``<!-- generated: layout -->`` with the code's modules and the first line of each one's docstring;
- ``[[bench:<file>:<dotted.path>]]`` with one figure of a results file (``[[bench+:…]]``: with its sign) and
  ``[[bench-date:<file>]]`` with the date it was measured, so prose quotes figures instead of copying them.

It also supplies a placeholder ``development/testing.md`` while that page does not exist yet (it never
replaces a real one). Nothing here starts a server, opens a connection or reads a secret: it imports the
modules, reads class definitions and parsers, and reads JSON files.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))

TESTING_PAGE = "development/testing.md"
PLACEHOLDER = """# Testing

This page is written together with the test tiers (`tests/unit`, `tests/integration`, `tests/e2e`,
`tests/scheduler`, `tests/browser`). Until it lands: `make test` runs the whole suite against real
Postgres, Redis and Airflow processes it starts itself on free ports (never the demo's).
"""

# Field descriptions written when the README held everything point at its sections: shown as links here.
README_SECTIONS = {
    "Column kinds inferred": "../guides/bring-your-own-data.md#column-kinds-inferred",
    "Between nights": "../guides/events.md",
    "Model stage": "../concepts/training.md#selection",
    "Score contracts": "redis.md",
    "Exports": "../guides/exports.md",
}

# Every CLI of the project: module, and what it is for (one line).
CLIS = [
    ("churn.model.registry", "Model versions, the champion and its history: list, show, roll back / promote."),
    ("churn.migrate", "Create or upgrade schema `churn` as its owner and grant the publisher and reader roles."),
    ("churn.config_docs", "Print the configuration table; validate this environment's `CHURN_*` settings."),
    ("churn.data.outbox", "Re-score events: install the outbox triggers, show the backlog, enqueue ids."),
    ("churn.data.suites", "Expectation suites stored in `churn.suites`: list, show, diff, accept a proposal."),
    ("churn.data.leakage", "Check a feature query for leakage before it goes live."),
    ("churn.demo", "`make demo`'s helpers: load the synthetic source tables, print a run's summary."),
    ("churn.dev.stack", "Airflow's components on this machine (`make demo`, `make cluster`): start, stop, status, run."),
    ("churn.dev.services", "The embedded PostgreSQL and Redis (`make services`): start, stop, env, clean."),
    ("churn.experiments.cli", "Validate an experiments file and show its arms, shares and sample sizes."),
    ("churn.dev.redis_cluster", "A Redis Cluster on loopback (primaries with replicas, passwords on) for trying "
                                "and testing the cluster path."),
]


# --- hook events -------------------------------------------------------------------------------------------

def on_files(files, config):
    """Supply a placeholder testing page while the real one does not exist."""
    if files.get_file_from_path(TESTING_PAGE) is None:
        from mkdocs.structure.files import File

        files.append(File.generated(config, TESTING_PAGE, content=PLACEHOLDER))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill the generated parts of a page."""
    for marker, render in (("<!-- generated: configuration -->", configuration_reference),
                           ("<!-- generated: cli -->", cli_reference),
                           ("<!-- generated: benchmarks -->", benchmarks),
                           ("<!-- generated: layout -->", code_layout)):
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    markdown = re.sub(r"\[\[bench-date:([\w.]+)\]\]", lambda m: measured_at(m.group(1)), markdown)
    return re.sub(r"\[\[bench(\+?):([\w.]+):([\w.-]+)\]\]",
                  lambda m: quote(m.group(2), m.group(3), signed=bool(m.group(1))), markdown)


# --- configuration -------------------------------------------------------------------------------------------

def config_sections() -> dict[str, tuple[str, str]]:
    """Each field's section as (title, what it covers), in declaration order: ``ChurnConfig.sections()`` and
    the docstring of each section class. A field in no section is listed under "Other"."""
    from churn.config import ChurnConfig

    notes = {base.__dict__["section"]: " ".join((base.__doc__ or "").split()) for base in ChurnConfig.__mro__
             if isinstance(base.__dict__.get("section"), str)}
    return {field: (section[:1].upper() + section[1:], notes.get(section, ""))
            for section, fields in ChurnConfig.sections().items() for field in fields}


def former_names(name: str) -> list[str]:
    """Other ``CHURN_*`` names a field is still read from (renamed settings keep working)."""
    from churn.config import ChurnConfig

    alias = ChurnConfig.model_fields[name].validation_alias
    choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
    return [c for c in choices if isinstance(c, str) and c.upper().startswith("CHURN_")
            and c.upper() != f"CHURN_{name.upper()}"]


def allowed_values(name: str) -> str:
    """What a field accepts, in words: its choices, its range, or its type."""
    from churn.config import ChurnConfig

    kind = typing.get_type_hints(ChurnConfig, include_extras=True)[name]
    metadata = list(ChurnConfig.model_fields[name].metadata)
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) is Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(kind))
    if kind is bool:
        return "`true`, `false`"
    bounds = {key: getattr(item, key) for item in metadata for key in ("ge", "le") if getattr(item, key, None) is not None}
    base = {int: "integer", float: "number", str: "text", Path: "path"}.get(kind, getattr(kind, "__name__", str(kind)))
    if "ge" in bounds and "le" in bounds:
        return f"{base}, {bounds['ge']} to {bounds['le']}"
    if "ge" in bounds:
        return f"{base} ≥ {bounds['ge']}"
    if "le" in bounds:
        return f"{base} ≤ {bounds['le']}"
    return base


def _link_readme_sections(text: str) -> str:
    return re.sub(r'README "([^"]+)"',
                  lambda m: f"[{m.group(1)}]({README_SECTIONS[m.group(1)]})" if m.group(1) in README_SECTIONS
                  else m.group(0), text)


def configuration_reference() -> str:
    """Every ``CHURN_*`` setting, by section, from the rows of ``churn.config_docs.markdown_table``."""
    from churn.config_docs import markdown_table

    rows: dict[str, str] = {}
    for row in markdown_table().splitlines():
        if not row.startswith("| CHURN_"):
            continue
        match = re.fullmatch(r"\| (CHURN_\w+) \| (.*?) \| (.*) \|", row)
        if not match:
            raise ValueError(f"unexpected row in churn.config_docs.markdown_table(): {row!r}")
        var, default, meaning = match.groups()
        name = var[len("CHURN_"):].lower()
        meaning = _link_readme_sections(meaning)
        former = [f for f in former_names(name) if f.upper() not in meaning]
        if former:
            meaning += " Also read as " + ", ".join(f"`{f.upper()}`" for f in former) + " (former name)."
        rows[name] = f"| `{var}` | {default} | {allowed_values(name)} | {meaning} |"
    sections = config_sections()
    grouped: dict[tuple[str, str], list[str]] = {}
    for name in [*(n for n in sections if n in rows), *(n for n in rows if n not in sections)]:
        grouped.setdefault(sections.get(name, ("Other", "")), []).append(rows[name])
    parts = []
    for (title, note), lines in grouped.items():
        parts += [f"### {title}", ""] + ([f"*{note}*", ""] if note else [])
        parts += ["| variable | default | allowed | meaning |", "| --- | --- | --- | --- |", *lines, ""]
    return "\n".join(parts)


# --- CLI -------------------------------------------------------------------------------------------------------

class _Parsed(Exception):
    """Raised instead of parsing, to hand back the parser a ``main()`` built."""


def cli_parser(module_name: str) -> argparse.ArgumentParser:
    """The module's parser: ``build_parser()``, else the one its ``main``/``_main`` builds (never run further)."""
    module = importlib.import_module(module_name)
    if hasattr(module, "build_parser"):
        return module.build_parser()
    main = getattr(module, "main", None) or getattr(module, "_main")
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = grab
    try:
        main(["--help"])
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{module_name}: main() returned without parsing its arguments")


@contextlib.contextmanager
def _help_width(columns: int = 100):
    """argparse wraps help at the terminal's width: pin it so the page does not depend on who builds it."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns + 2)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, list[str], argparse.ArgumentParser]]:
    """(name, aliases, parser) of each sub-command, in declaration order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: dict[int, tuple[str, list[str], argparse.ArgumentParser]] = {}
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    seen[id(sub)][1].append(name)
                else:
                    seen[id(sub)] = (name, [], sub)
            found += list(seen.values())
    return found


def cli_reference() -> str:
    """``--help`` of every CLI and sub-command, from the parsers."""
    parts = []
    with _help_width():
        for module_name, purpose in CLIS:
            parser = cli_parser(module_name)
            parts += [f"## `python -m {module_name}`", "", purpose, "", "```text", parser.format_help().rstrip(),
                      "```", ""]
            for name, aliases, sub in _subcommands(parser):
                also = f" (alias: {', '.join(f'`{a}`' for a in aliases)})" if aliases else ""
                parts += [f"### `{name}`{also}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


# --- code layout -----------------------------------------------------------------------------------------------

def _summary(path: Path) -> str:
    """The first line of a module's docstring (read with ``ast``: nothing is imported)."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n")[0].replace("|", "\\|")


def code_layout() -> str:
    """One table per folder of the code: each module and the first line of its docstring."""
    parts = []
    for folder in ("dags", "plugins", "include/churn", *sorted(
            str(p.relative_to(ROOT)) for p in (ROOT / "include" / "churn").iterdir()
            if p.is_dir() and (p / "__init__.py").exists()), "bench"):
        modules = [p for p in sorted((ROOT / folder).glob("*.py")) if p.name != "__init__.py" or _summary(p)]
        if not modules:
            continue
        parts += [f"### `{folder}/`", "", "| module | what it is |", "| --- | --- |"]
        parts += [f"| `{p.name}` | {_summary(p) or '—'} |" for p in modules] + [""]
    return "\n".join(parts)


# --- benchmarks ------------------------------------------------------------------------------------------------

def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def measured_at(name: str) -> str:
    """When a results file was measured, as ``YYYY-MM-DD HH:MM UTC``."""
    data = _load(name)
    stamp = data.get("measured_at") or data.get("started_at") or data.get("started")
    if not stamp:
        raise ValueError(f"bench/results/{name} has no measured_at / started_at / started")
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")


def quote(name: str, path: str, signed: bool = False) -> str:
    """One figure of a results file, by dotted path (list items by index); ``signed``: with its sign."""
    value: typing.Any = _load(name)
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    if signed:
        return f"{value:+.4f}"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}".removesuffix(".0")
    return f"{value:,}" if isinstance(value, int) else str(value)


def _num(value: typing.Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _table(header: list[str], rows: list[list[typing.Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _source(name: str, data: dict) -> list[str]:
    machine = data.get("machine") or {}
    cores = machine.get("cpus") or machine.get("cores")
    what = [f"measured {measured_at(name)}"]
    if cores:
        what.append(f"{cores} cores")
    load = [machine.get(key) for key in ("load_avg_1m", "load_avg_1m_before", "load_before", "loadavg_before",
                                         "load_average_at_start") if machine.get(key) is not None]
    if load:
        first = load[0][0] if isinstance(load[0], list) else load[0]
        what.append(f"load {first:.1f} at the start")
    if data.get("command"):
        what.append(f"`{data['command']}`")
    if data.get("caveat"):
        what.append(data["caveat"])
    return [f"`bench/results/{name}`: " + "; ".join(what) + ".", ""]


def _publish(name: str, data: dict) -> list[str]:
    pg, rd, mem, lat, e2e = (data["postgres_publish"], data["redis_publish"], data["redis_memory_per_customer"],
                             data["lookup_latency"], data["end_to_end"])
    rows = [
        [f"Postgres publish, {pg['rows']:,} rows", f"{pg['project']['rows_per_second']:,.0f} rows/s "
         f"({pg['project']['seconds']} s); {pg['project_vs_naive']}× naive INSERT, {pg['project_vs_floor']}× plain COPY",
         f"{pg['targets']['vs_naive']} naive, {pg['targets']['vs_floor']} floor"],
        [f"Redis publish `json`, {rd['rows']:,}", f"{rd['project_json']['rows_per_second']:,.0f} rows/s "
         f"({rd['project_json']['seconds']} s); {rd['json_vs_naive']}× naive SET, {rd['json_vs_floor']}× batched MSET",
         f"{rd['targets']['vs_naive']} naive, {rd['targets']['vs_floor']} floor"],
        [f"Redis publish `hash`, {rd['rows']:,}", f"{rd['project_hash']['rows_per_second']:,.0f} rows/s "
         f"({rd['project_hash']['seconds']} s); {rd['hash_vs_naive']}× naive SET, {rd['hash_vs_floor']}× batched MSET",
         f"{rd['targets']['vs_naive']} naive, {rd['targets']['vs_floor']} floor"],
        ["Redis memory per customer", f"`json` {mem['json']['bytes_per_customer']} B, "
         f"`hash` {mem['hash']['bytes_per_customer']} B", mem["hash"].get("target") or "—"],
    ]
    for layout, figures in lat.items():
        rows.append([f"lookup `{layout}`, {figures['clients']} clients",
                     f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; Redis server time "
                     f"{figures['redis_server_usec_per_lookup']} µs", figures.get("target") or "—"])
    for size, run in e2e.items():
        if not isinstance(run, dict) or "wall_seconds" not in run:
            continue
        steps = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in run["steps_seconds"].items())
        rows.append([f"end to end, {int(size):,} source customers ({run['customers_scored']:,} scored)",
                     f"wall {run['wall_seconds']} s: inference {run['inference_seconds']} s, rest "
                     f"{run['non_inference_seconds']} s ({steps}); peak RSS {run['peak_rss_mb']} MB",
                     f"rest per million: {e2e['targets']['non_inference_seconds_per_million']} s"])
    rows.append(["end to end, peak RSS largest / smallest", f"{e2e['peak_rss_ratio_largest_vs_smallest']}×",
                 e2e["targets"]["peak_rss"]])
    machine = data.get("machine") or {}
    reruns = [f"{label} from a re-run that started at load {machine[key]['load_average_at_start'][0]:.1f}"
              for key, label in (("rerun_throughput", "publish throughput"), ("rerun_e2e", "end to end"))
              if isinstance(machine.get(key), dict) and machine[key].get("load_average_at_start")]
    note = [f"{machine.get('cpu', 'machine')}, {machine.get('memory_gb', '?')} GB; " + "; ".join(reruns) + ".", ""] \
        if reruns else []
    return _source(name, data) + note + _table(["measure", "result", "target"], rows)


def _dag_memory(name: str, data: dict) -> list[str]:
    small, large = data["runs"][0], data["runs"][-1]
    rows = [[f"`{task}`", _num(small["tasks"][task]["peak_rss_mb"], 1), _num(large["tasks"].get(task, {}).get(
        "peak_rss_mb"), 1), f"{ratio}×"] for task, ratio in data["per_task_ratio_large_over_small"].items()]
    rows.append(["naive validation (one read, one GX batch)", _num(small["naive_validate"]["peak_rss_mb"], 1),
                 _num(large["naive_validate"]["peak_rss_mb"], 1), f"{data['naive_validate_ratio_large_over_small']}×"])
    head = [f"Largest task peak: {small['max_task_peak_rss_mb']} MB at {small['customers']:,} customers, "
            f"{large['max_task_peak_rss_mb']} MB at {large['customers']:,}: "
            f"{data['max_task_peak_ratio_large_over_small']}× (target: {data['target']}).", ""]
    return _source(name, data) + head + _table(
        ["task", f"peak RSS MB, {small['customers']:,}", f"peak RSS MB, {large['customers']:,}", "ratio"], rows)


def _data_ingest_memory(name: str, data: dict) -> list[str]:
    rows = [[label, f"{data[key]['rows']:,}", f"{data[key]['seconds']:.1f}", f"{data[key]['peak_rss_mb']:.0f}"]
            for key, label in (("project", "streamed ingest (the project)"), ("naive", "whole-file `pandas.read_csv`"))]
    return _source(name, data) + [f"{data['file_mb']} MB file, chunks of {data['chunk_rows']:,} rows.", ""] + _table(
        ["reader", "rows", "seconds", "peak RSS MB"], rows)


def _rescore(name: str, data: dict) -> list[str]:
    cases = [("first event after unpausing", data["warmup_event"]),
             (f"single events ({data['single_events']['lag']['n']}, one after another)", data["single_events"])]
    cases += [(f"burst of {burst['customers']:,} customers (one transaction)", burst) for burst in data["bursts"]]
    stream = data.get("stream") or {}
    if stream:  # the same events announced by XADD to the re-score stream instead of the outbox triggers
        cases += [(f"stream: single events ({stream['single_events']['lag']['n']})", stream["single_events"])]
        cases += [(f"stream: burst of {b['customers']:,} customers", b) for b in stream["bursts"]]
    rows = []
    for label, case in cases:
        lag = case["lag"]
        rows.append([label, lag["p50_s"], lag["p95_s"], lag["max_s"], _num(case.get("drain_customers_per_s"), 1),
                     _num(case.get("task_customers_per_s"), 1)])
    out = _source(name, data) + [f"Population {data['population']:,} customers; lag = event committed → new "
                                 "score readable in Redis, in seconds.", ""]
    out += _table(["case", "lag p50", "lag p95", "lag max", "drained customers/s", "re-score task customers/s"], rows)
    splits = [(label, case["lag_split"]) for label, case in cases if "lag_split" in case]
    if splits:
        phases = list(dict.fromkeys(p for _, split in splits for p in split["task_phases_s"]))  # outbox and stream
        rows = [[label, split["trigger_wakeup_s"], split["scheduling_s"],
                 *(_num(split["task_phases_s"].get(p), 3) for p in phases)] for label, split in splits]
        out += ["Where the lag goes (seconds):", ""] + _table(["case", "trigger wake-up", "scheduling", *phases], rows)
    return out


def _scale_out(name: str, data: dict) -> list[str]:
    rows = []
    for run in data["runs"]:
        parts = run["partitions_detail"]
        def rng(key: str, fmt: str = ",.2f") -> str:
            low, high = min(p[key] for p in parts), max(p[key] for p in parts)
            return f"{low:{fmt}}" if low == high else f"{low:{fmt}}–{high:{fmt}}"

        rows.append([run["executor"], run["partitions"], run["scoring_wall_seconds"], rng("task_seconds"),
                     rng("model_load_seconds"), rng("inference_seconds"),
                     rng("rows_per_second", ",.0f"),
                     run["stages_seconds"]["score_merge_stage"]])
    return _source(name, data) + [f"{data['customers']:,} customers, {data['scored_customers']:,} scored.", ""] + _table(
        ["executor", "partitions", "scoring wall s", "partition task s", "model load s", "inference s",
         "rows/s per partition", "merge s"], rows)


def _automl(name: str, data: dict) -> list[str]:
    rows = []
    for s in data["summary"]:
        met = "; ".join(f"{target}: {'met' if ok else 'missed'}" for target, ok in (s.get("targets") or {}).items())
        rows.append([f"{s['customers']:,}", s["budget_minutes"], s["seeds"], _num(s["logistic_baseline_test_roc_auc"]),
                     _num(s["hist_gradient_boosting_test_roc_auc"]), _num(s["tpot_test_roc_auc"]),
                     f"**{_num(s['champion_test_roc_auc'])}**", _num(s["oracle_test_roc_auc"]),
                     _signed(s["champion_minus_best_baseline"]), _signed(s["oracle_minus_champion"]),
                     ", ".join(str(n) for n in s["tpot_pipelines_scored"]), met or "—"])
    return _source(name, data) + _table(
        ["customers", "budget min", "seeds", "logistic", "HistGB", "TPOT", "champion", "oracle",
         "champion − best default (paired median)", "oracle − champion", "pipelines scored", "targets"], rows)


def _telco(name: str, data: dict) -> list[str]:
    if "summary" in data:
        rows = [[s["budget_minutes"], s["seeds"], _num(s["baseline_logistic_regression"]),
                 _num(s["baseline_hist_gradient_boosting"]), _num(s["candidate_tpot"]),
                 f"**{_num(s['champion_test_roc_auc'])}**", _signed(s["champion_minus_best_baseline"]),
                 ", ".join(str(n) for n in s["tpot_pipelines_scored"]),
                 "met" if s.get("target_0.845") else "missed"] for s in data["summary"]]
        return _source(name, data) + _table(
            ["budget min", "seeds", "logistic baseline", "HistGB baseline", "project TPOT", "champion",
             "champion − best baseline (paired median)", "pipelines scored", "target ≥ 0.845"], rows)
    rows = [[f"baseline {k.replace('_', ' ')}", _num(v)] for k, v in data.get("baselines_test_roc_auc", {}).items()]
    rows += [[f"project {k.replace('_', ' ')}", _num(v.get("test_roc_auc"))]
             for k, v in data.get("project_candidates", {}).items()]
    split = data.get("split") or {}
    seed = f" (one split, seed {split['seed']})" if isinstance(split, dict) and "seed" in split else ""
    return _source(name, data) + [f"Test ROC AUC{seed}:", ""] + _table(["model", "test ROC AUC"], rows)


def _nightly_floor(name: str, data: dict) -> list[str]:
    runs = data["runs"]
    tasks = list(runs[0]["tasks"])
    rows = [[f"`{task}`", *(" / ".join([_num(run["tasks"].get(task, {}).get("seconds"), 1),
                                        _num(run["tasks"].get(task, {}).get("cpu_seconds"), 1),
                                        _num(run["tasks"].get(task, {}).get("peak_rss_mb"), 0)]) for run in runs)]
            for task in tasks]
    out = _source(name, data) + [f"Commit `{data.get('commit', '?')}`, {data['partitions']} scoring partitions. "
                                 "Each task in its own interpreter: wall s / CPU s / peak RSS MB.", ""]
    out += _table(["task", *(f"{run['customers']:,} customers ({run['rows_scored']:,} scored)" for run in runs)],
                  rows)
    targets = data.get("targets", {})
    keys = list(dict.fromkeys([*runs[0]["ratios"], *(k for k in targets if k in
                                                     ("inference_speed_over_raw_onnx",))]))
    if all(run["whole_file_partition"]["runtime"] == "sklearn" for run in runs):  # scikit-learn against itself
        keys = [k for k in keys if k != "sklearn_over_project_inference_seconds"]
    ratio_rows = [[key.replace("_", " "), *(_num(run["ratios"].get(key), 2) if key in run["ratios"]
                                            else "not measured" for run in runs), _num(targets.get(key), 2)]
                  for key in keys]
    ratio_rows.append(["DAG seconds without training (task wall times incl. interpreter start, summed)",
                       *(_num(run["dag_seconds_without_training"], 1) for run in runs),
                       _num(targets.get("dag_seconds_without_training_at_10M"), 0)])
    if data.get("largest_task_peak_rss_large_over_small") is not None:
        ratio_rows.append(["largest task peak RSS, large / small", "", _num(
            data["largest_task_peak_rss_large_over_small"], 2), _num(targets.get(
                "largest_task_peak_rss_large_over_small"), 2)][: len(runs) + 2])
    out += ["Against the floors measured in the same run (each ratio as its name says; targets are bounds):", ""]
    out += _table(["ratio", *(f"{run['customers']:,}" for run in runs), "target"], ratio_rows)
    return out


def _redis_memory(name: str, data: dict) -> list[str]:
    server = data.get("server") or {}
    rows = []
    for run in data["runs"]:
        stats = run.get("bucket_stats") or {}
        rows.append([run["layout"], f"{run['customers']:,}", _num(run["bytes_per_customer"], 1), _num(run["buckets"]),
                     _num(stats.get("largest_bucket")), _num(stats.get("compact_encoded_keys")), _num(stats.get("keys")),
                     _num(run["round_trips"]["commands_per_lookup"], 2), _num(run["publish_seconds"], 1),
                     _num(run.get("publish_speed_over_redis_cli_pipe"), 2)])
    out = _source(name, data) + [f"Server {server.get('name')} {server.get('version')}, hash-max-listpack-entries "
                                 f"{server.get('hash_max_listpack_entries')}; target ≤ "
                                 f"{data['targets']['compact_bytes_per_customer_at_10M']} bytes per customer at 10M "
                                 "(compact) and one command per lookup.", ""]
    return out + _table(["layout", "customers", "bytes/customer", "buckets", "largest bucket", "compact buckets",
                         "keys", "commands/lookup", "publish s", "publish speed / redis-cli --pipe"], rows)


def _lookup_latency(name: str, data: dict) -> list[str]:
    rows = []
    for case in data["cases"]:
        floor, project = case["floor"], case["project"]
        rows.append([f"{case['rate']:,}", "yes" if case["during_publish"] else "no",
                     _num(floor["rate_achieved"], 0), _num(floor["p50_us"] / 1000, 3), _num(floor["p99_us"] / 1000, 3),
                     _num(floor["p999_us"] / 1000, 3), _num(project["rate_achieved"], 0),
                     _num(project["p50_us"] / 1000, 3), _num(project["p99_us"] / 1000, 3),
                     _num(project["p999_us"] / 1000, 3), _num(case["project_p99_over_floor_p99"], 2)])
    server = data.get("server") or {}
    out = _source(name, data) + [f"{data['customers']:,} customers in the compact layout, server {server.get('name')} "
                                 f"{server.get('version')}; open loop, {data['seconds_per_case']:g} s per case; "
                                 "latencies in ms from each lookup's scheduled start. Targets: project p99 ≤ "
                                 f"{data['targets']['p99_over_floor_p99']}× the floor's, ≤ "
                                 f"{data['targets']['p99_ms_at_20k']} ms at 20,000/s during a publish.", ""]
    return out + _table(["lookups/s", "during publish", "floor achieved/s", "floor p50", "floor p99", "floor p99.9",
                         "project achieved/s", "project p50", "project p99", "project p99.9", "p99 / floor"], rows)


def _experiment(name: str, data: dict) -> list[str]:
    summary, targets = data["summary"], data["targets"]
    rows = [["95 % interval of the uplift covers the planted value", f"{targets['coverage_low']:.0%}-"
             f"{targets['coverage_high']:.0%}", f"{summary['coverage']:.1%}", summary["met"]["coverage"]],
            ["split check false alarms (correct splits)", f"≤ {targets['srm_false_alarm_max']:.1%}",
             f"{summary['srm_false_alarm_rate']:.2%}", summary["met"]["srm_false_alarm"]],
            ["48/52 split of 100,000 flagged", f"≥ {targets['srm_detect_min']:.0%}",
             f"{summary['srm_detection_rate']:.1%}", summary["met"]["srm_detection"]],
            [f"better model wins at {data['power']['sample_size_per_arm']:,} per arm", f"≥ {targets['power_min']:.0%}",
             f"{summary['power']:.1%}", summary["met"]["power"]]]
    out = _source(name, data) + [f"{data['population']:,} generated customers (true churn rate "
                                 f"{data['base_churn_rate']:.1%}), contacted hazard × {data['hazard_factor']}, "
                                 f"{data['coverage']['experiments']} experiments per check.", ""]
    return out + _table(["check", "target", "measured", "met"], rows)


RENDERERS = {"experiment": _experiment, "redis_memory": _redis_memory, "lookup_latency": _lookup_latency, "nightly_floor": _nightly_floor, "publish": _publish, "dag_memory": _dag_memory, "data_ingest_memory": _data_ingest_memory,
             "rescore": _rescore, "scale_out": _scale_out, "automl_synthetic": _automl, "telco_quality": _telco}
TITLES = {"nightly_floor": "The nightly batch against its floors",
          "experiment": "Experiments: does the analysis recover a planted effect?",
          "redis_memory": "Redis memory per customer, by layout",
          "lookup_latency": "Lookup latency, open loop, against a C client",
          "publish": "Publish throughput, memory, lookups and end to end", "dag_memory": "Whole DAG, memory per task",
          "data_ingest_memory": "File ingest, memory", "rescore": "Event re-scoring latency",
          "scale_out": "Scoring scale-out (LocalExecutor, CeleryExecutor)",
          "automl_synthetic": "AutoML on the synthetic population, against its oracle",
          "telco_quality": "AutoML on the Telco file"}


def _kind(name: str, data: dict) -> str:
    return data.get("benchmark") or Path(name).stem


def benchmarks() -> str:
    """One section per kind of benchmark; every results file, newest first, with its date."""
    files = sorted(RESULTS.glob("*.json"))
    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for path in files:
        data = json.loads(path.read_text())
        by_kind.setdefault(_kind(path.name, data), []).append((path.name, data))
    parts: list[str] = []
    for kind in [*(k for k in TITLES if k in by_kind), *(k for k in by_kind if k not in TITLES)]:
        entries = by_kind[kind]
        parts += [f"### {TITLES.get(kind, kind)}", ""]
        entries.sort(key=lambda entry: measured_at(entry[0]), reverse=True)
        for name, data in entries:
            render = RENDERERS.get(kind)
            parts += render(name, data) if render else _source(name, data) + ["(No table for this file yet.)", ""]
    return "\n".join(parts)
