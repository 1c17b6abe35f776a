"""Statistics every stage reports with: Wilson, Student-t and percentile-bootstrap intervals, the values a
metric can take, pooling per-seed estimates, Holm's adjustment, and the explanation rating scale.
Notebook 05's tables (kdlib.analysis.tables) build on it; 04's metrics and the plots use it too."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests


def bootstrap_interval(
    statistic: Callable[..., np.ndarray],
    *samples: np.ndarray,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over items.

    `samples` are aligned arrays [n] resampled jointly (paired); `statistic` maps resampled arrays
    [B, n] to [B]. Resamples where the statistic is undefined (NaN) are dropped. NaNs for n = 0.
    """
    n = len(samples[0])
    if n == 0:
        return math.nan, math.nan
    index = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    values = statistic(*(np.asarray(sample)[index] for sample in samples))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


RATING_SCALE = (1, 5)  # explanation ratings (Hendriks et al.'s five dimensions)


UNBOUNDED = (-math.inf, math.inf)


def value_range(metric: str) -> tuple[float, float]:
    """The values an item outcome or 2x2 statistic can take: a judge_ or human_ rating the rating scale,
    phi [-1, 1], anything else (correctness, a rate) [0, 1]."""
    if metric.startswith(("judge_", "human_")):
        return RATING_SCALE
    return (-1.0, 1.0) if metric == "phi" else (0.0, 1.0)


def difference_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """The values a difference of two quantities within `bounds` can take."""
    return bounds[0] - bounds[1], bounds[1] - bounds[0]


def t_interval(
    values, confidence: float = 0.95, bounds: tuple[float, float] = UNBOUNDED
) -> tuple[float, float]:
    """Student-t interval of the mean of `values`, clipped to the `bounds` the mean can take (NaNs for
    fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(max(values.mean() - half, bounds[0])), float(min(values.mean() + half, bounds[1]))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaNs for n=0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def pool_seeds(
    value, low, high, confidence: float = 0.95, bounds: tuple[float, float] = UNBOUNDED
) -> tuple[float, float, float, str]:
    """One estimate from per-seed values and intervals: with one seed that seed's own interval, with more
    the mean and a t interval over the seeds, clipped to `bounds`. Returns (value, low, high, basis)."""
    value = np.asarray(value, dtype=float)
    if len(value) == 1:
        return (
            float(value[0]),
            float(np.asarray(low)[0]),
            float(np.asarray(high)[0]),
            "1 seed, bootstrap over items, not over training seeds",
        )
    t_low, t_high = t_interval(value, confidence, bounds)
    return float(value.mean()), t_low, t_high, f"{len(value)} seeds, t interval over seeds"


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values (statsmodels), NaNs kept as NaN."""

    adjusted = pd.Series(np.nan, index=p_values.index)
    known = p_values.dropna()
    if len(known):
        adjusted[known.index] = multipletests(known.to_numpy(), method="holm")[1]
    return adjusted
