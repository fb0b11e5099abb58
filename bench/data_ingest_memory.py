"""Memory benchmark: the chunked file source vs a naive whole-file read, on one generated big CSV.

Generates a Telco-shaped CSV ``--factor`` times the bad-input corpus's usual size (200 rows),
then, each in a fresh subprocess so peak RSS is comparable, converts it to the same typed
Parquet snapshot:

* project: ``churn.data.sources.read_file_snapshot`` (``--chunk-rows`` rows at a time);
* naive: ``pandas.read_csv`` of the whole file, the same per-chunk conversion applied once to
  the whole frame, ``to_parquet``.

Records both peak RSS figures, rows and the ratio as JSON (default
``bench/results/data_ingest_memory.json``). Run from the project root:

    .venv/bin/python bench/data_ingest_memory.py                   # factor 1000 (200k rows)
    .venv/bin/python bench/data_ingest_memory.py --factor 5000 --out /tmp/big.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from datetime import date
from pathlib import Path
sys.path.insert(0, {root!r})
from churn.config import ChurnConfig
from churn.data.spec import spec_from_config
from churn.data.sources import coerce_chunk, read_file_snapshot, snapshot_schema
from tests.support.bad_inputs.corpus import TELCO_ENV
mode, src, out, chunk = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
spec = spec_from_config(ChurnConfig.from_env({{**TELCO_ENV, "CHURN_FILE_PATH": str(src)}}))
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "project":
    rows = read_file_snapshot(spec, [src], out, date(2026, 11, 20), labelled=True, chunk_rows=chunk).rows
else:
    import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
    frame = pd.read_csv(src, dtype=str, keep_default_na=False)
    typed = coerce_chunk(frame[spec.required_columns(True)], spec, True)
    pq.write_table(pa.Table.from_pandas(typed, schema=snapshot_schema(spec, True), preserve_index=False), out)
    rows = len(typed)
print(json.dumps({{"rows": rows, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_imports_mb": start_rss / 1024}}))
"""


def _measure(mode: str, src: Path, out: Path, chunk_rows: int) -> dict:
    code = _CHILD.format(root=str(ROOT / "include"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}"}
    proc = subprocess.run([sys.executable, "-c", code, mode, str(src), str(out), str(chunk_rows)], env=env,
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Generate the file, measure both readers, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_ingest_memory.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "include"))
    from tests.support.bad_inputs.corpus import write_big

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.csv"
        rows = write_big(src, factor=args.factor)
        size_mb = src.stat().st_size / 1e6
        project = _measure("project", src, Path(tmp) / "project.parquet", args.chunk_rows)
        naive = _measure("naive", src, Path(tmp) / "naive.parquet", args.chunk_rows)
    record = {
        "benchmark": "data_ingest_memory", "measured_at": datetime.now(timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
        "rows": rows, "file_mb": round(size_mb, 1), "chunk_rows": args.chunk_rows,
        "project": project, "naive": naive,
        "peak_rss_ratio_naive_over_project": round(naive["peak_rss_mb"] / project["peak_rss_mb"], 2),
        "extra_rss_ratio_naive_over_project": round(
            (naive["peak_rss_mb"] - naive["rss_after_imports_mb"])
            / max(project["peak_rss_mb"] - project["rss_after_imports_mb"], 1e-6), 2),
    }
    assert project["rows"] == naive["rows"] == rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
