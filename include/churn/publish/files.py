"""CSV exports for email-journey tools: safe cells, atomic files, a manifest beside each."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class ExportFile:
    """A written export and its manifest."""

    path: str
    manifest_path: str
    rows: int
    sha256: str


def neutralize_cell(value: object) -> object:
    """Prefix text that a spreadsheet would run as a formula with a single quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Apply ``neutralize_cell`` to every text column (numbers are left as numbers)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_string_dtype(out[column]) or out[column].dtype == object:
            out[column] = out[column].map(neutralize_cell)
    return out


def write_export(frame: pd.DataFrame, out_dir: str | Path, file_name: str, *, run_id: str, model_version: str,
                 gzip_output: bool = False) -> ExportFile:
    """Write ``frame`` as UTF-8 CSV to a temporary name, then rename; write the manifest last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (file_name + (".gz" if gzip_output else ""))
    tmp = final.with_name(f".{final.name}.partial")
    text = io.StringIO()
    neutralize_frame(frame).to_csv(text, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    data = text.getvalue().encode("utf-8")
    if gzip_output:
        data = gzip.compress(data, mtime=0)  # mtime=0: same rows, same bytes, same checksum
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    digest = hashlib.sha256(data).hexdigest()
    manifest = final.with_name(final.name + ".manifest.json")
    manifest_tmp = manifest.with_name(f".{manifest.name}.partial")
    manifest_tmp.write_text(
        json.dumps({"file": final.name, "rows": len(frame), "sha256": digest, "model_version": model_version,
                    "run_id": run_id, "columns": list(frame.columns)}, indent=2)
    )
    os.replace(manifest_tmp, manifest)
    log.info("export %s: %s rows, sha256 %s", final, len(frame), digest[:12])
    return ExportFile(str(final), str(manifest), len(frame), digest)


EXPORT_SQL = """
SELECT s.customer_id, s.churn_probability, s.risk_band, s.risk_decile, s.model_version, s.run_id,
       c.email, c.plan
FROM churn.{table} s
JOIN src.customers c USING (customer_id)
WHERE s.risk_band = %s
ORDER BY s.churn_probability DESC, s.customer_id
"""


def export_segment(conn, table: str, band: str, out_dir: str | Path, run_id: str, model_version: str,
                   gzip_output: bool = False) -> ExportFile:
    """Export one risk band of a published run, joined with contact attributes."""
    with conn.cursor() as cur:
        cur.execute(EXPORT_SQL.format(table=table), (band,))
        columns = [d[0] for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    conn.commit()
    return write_export(frame, out_dir, f"churn_{band}_risk_{run_id}.csv", run_id=run_id,
                        model_version=model_version, gzip_output=gzip_output)
