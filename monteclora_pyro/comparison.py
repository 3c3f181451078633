"""Comparing methods: the paired bootstrap interval of a per-row score difference, and of a ratio of spreads
across settings.

Two methods scored on the same evaluation rows (and, over several seeds, on the same rows again) give
one difference per row and seed.  Rows, not differences, are the independent units: the same hard
row is hard in every seed.  :func:`paired_bootstrap` resamples rows with replacement, each bringing
all its differences, and reads the percentile interval of the mean difference (Efron and Tibshirani
1993, ch. 13).  :func:`spread_ratio_bootstrap` does the same for robustness across settings (learning
rates): there the seeds are the independent units, resampled with all their settings.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from .kinds import fraction, positive_int

__all__ = ["paired_bootstrap", "spread_ratio_bootstrap"]


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


def _spreads(scores: np.ndarray) -> np.ndarray:
    """max - min over settings (axis -2) of the mean over seeds (axis -1)."""
    means = scores.mean(-1)
    return means.max(-1) - means.min(-1)


def _ratios(spreads: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """spreads / baseline, inf where only the baseline is flat and 1 where both are (0 / 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.asarray(spreads, dtype=np.float64) / baseline
    return np.where(np.isnan(ratios), 1.0, ratios)


def spread_ratio_bootstrap(scores: Mapping[str, np.ndarray], baseline: str, num_resamples: int = 2000,
                           level: float = 0.95, seed: int = 0) -> dict[str, dict[str, object]]:
    """Robustness across settings, per method, against ``baseline``'s.

    ``scores[method]`` is an array (settings, seeds): the metric of each setting (e.g. learning rate) and
    seed, column j being the same seed (data subset and order) for every method.  A method's spread is
    max - min over settings of its seed-mean (the paper's measure of swing with the learning rate); its
    ratio to the baseline's has a ``level`` percentile interval from resampling seeds with replacement,
    the same columns for every method, so a seed that is good at every setting moves both spreads.  With
    5 seeds the interval is rough: max - min of noisy means is biased up, more so for noisier methods.

    Returns, per method: ``seed_mean`` and ``seed_std`` (sample std over seeds) per setting, ``spread``,
    ``baseline_spread``, ``ratio`` (spread / baseline spread), ``low``, ``high`` and ``seeds``.
    """
    positive_int.check("num_resamples", num_resamples)
    fraction.check("level", level)
    if baseline not in scores:
        raise ValueError(f"baseline = {baseline!r} is not among the methods scored ({', '.join(scores)})")
    arrays = {m: np.asarray(v, dtype=np.float64) for m, v in scores.items()}
    shape = arrays[baseline].shape
    for method, values in arrays.items():
        if values.ndim != 2 or values.shape != shape or shape[0] < 2 or shape[1] < 1:
            raise ValueError(f"scores[{method!r}] has shape {values.shape}; every method needs the baseline's "
                             f"(settings >= 2, seeds >= 1), here {shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"scores[{method!r}] must be finite")
    picks = np.random.default_rng(seed).integers(0, shape[1], size=(num_resamples, shape[1]))
    base_spread = _spreads(arrays[baseline])
    base_resampled = _spreads(arrays[baseline][:, picks].transpose(1, 0, 2))
    tail = (1 - level) / 2
    summary = {}
    for method, values in arrays.items():
        spread = _spreads(values)
        ratios = _ratios(_spreads(values[:, picks].transpose(1, 0, 2)), base_resampled)
        low, high = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")  # no interpolation: inf stays
        summary[method] = {
            "seed_mean": values.mean(1).tolist(),
            "seed_std": (values.std(1, ddof=1) if shape[1] > 1 else np.zeros(shape[0])).tolist(),
            "spread": float(spread), "baseline_spread": float(base_spread),
            "ratio": float(_ratios(spread, base_spread)),
            "low": float(low), "high": float(high), "seeds": shape[1],
        }
    return summary
