"""Paired comparison over seeds, shared by the quality benchmarks."""

from __future__ import annotations

import numpy as np


def paired_difference(runs: list[dict], ahead: str, behind: str) -> dict:
    """``ahead`` minus ``behind`` per run (one seed, one test split), their median, and the difference of medians.

    A seed's test split is easier or harder for every model alike, so the per-seed (paired) median is the
    comparison; the unpaired difference of medians is kept for reference.
    """
    per_seed = [round(r[ahead] - r[behind], 4) for r in runs]
    unpaired = np.median([r[ahead] for r in runs]) - np.median([r[behind] for r in runs])
    return {"per_seed": per_seed, "median": round(float(np.median(per_seed)), 4), "unpaired": round(float(unpaired), 4)}
