"""Comparing two methods on the same rows: the paired bootstrap interval of a per-row score difference.

Two methods scored on the same evaluation rows (and, over several seeds, on the same rows again) give
one difference per row and seed.  Rows, not differences, are the independent units: the same hard
row is hard in every seed.  :func:`paired_bootstrap` resamples rows with replacement, each bringing
all its differences, and reads the percentile interval of the mean difference (Efron and Tibshirani
1993, ch. 13).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .kinds import fraction, positive_int

__all__ = ["paired_bootstrap"]


def paired_bootstrap(rows: Sequence[Hashable], differences: Sequence[float], num_resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The mean of ``differences`` (score of method a minus method b, one per row and seed) and its
    ``level`` percentile interval, resampling the rows (``rows[i]`` is the row of ``differences[i]``).

    Returns ``{"mean", "low", "high", "rows", "pairs"}``.
    """
    positive_int.check("num_resamples", num_resamples)
    fraction.check("level", level)
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(rows) or not len(values):
        raise ValueError(f"rows and differences must be two non-empty sequences of one length; got {len(rows)} rows "
                         f"and {values.shape} differences")
    if not np.isfinite(values).all():
        raise ValueError("differences must be finite")
    _, cluster = np.unique(np.asarray(rows, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(cluster, weights=values)
    counts = np.bincount(cluster).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(num_resamples, len(sums)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "rows": len(sums),
            "pairs": len(values)}
