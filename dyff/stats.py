"""Statistics for comparing and qualifying results: the bootstrap, McNemar's exact test, and
for slices (`dyff.criteria`) the one-sided two-proportion z-test and Benjamini-Hochberg.

Pure numpy (no scipy at run time); `tests/unit/test_stats.py` holds them to scipy.

**Bootstrap as counts.** A bootstrap resample draws N row indices uniformly with replacement;
every statistic here is a function of *how many times* each index was drawn, so `bootstrap`
hands the statistic a matrix of counts, one row per resample. Drawing the indices of all
resamples at once would cost resamples x N random numbers (10^9 for a million rows and a
thousand resamples). Instead, rows that contribute identically to the statistic are
grouped (`sizes[j]` rows in group j): the counts of a uniform resample of N rows, summed per
group, follow Multinomial(N, sizes / N) exactly, so one multinomial draw per resample over the
groups gives the same distribution as resampling the rows themselves. A comparison of
accuracy needs four groups (right/wrong by A x right/wrong by B) whatever N is. With
`sizes = np.ones(n)` every row is its own group: the plain bootstrap of row indices.

A paired bootstrap is one whose groups are defined on both evaluations' values of the same
row, and whose statistic computes the difference from the same counts: the resample is
drawn once and applied to both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
# Counts (resamples x groups) drawn at once: bounds the memory of one block.
BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval; `low`/`high` are None where every resample's
    statistic was undefined (NaN)."""

    low: float | None
    high: float | None
    level: float
    resamples: int


def resample_counts(sizes: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, len(sizes)) int64: how many rows of each group a uniform resample with
    replacement of all `sizes.sum()` rows draws."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError("sizes must be a 1-d array of non-negative group sizes")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be between 1 and {MAX_RESAMPLES}")
    n = int(sizes.sum())
    if n == 0:
        return np.zeros((resamples, len(sizes)), dtype=np.int64)
    pvals = sizes / n
    return rng.multinomial(n, pvals, size=resamples).astype(np.int64, copy=False)


def bootstrap(
    statistic: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    sizes: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
    block_cells: int = BLOCK_CELLS,
) -> list[Interval]:
    """Percentile intervals of `statistic` over `resamples` bootstrap resamples.

    `statistic(counts, rng)` takes a (r, G) matrix of per-group draw counts
    (`resample_counts`, G = len(sizes)) and the bootstrap's generator (for a statistic that
    needs more randomness than the counts), and returns r values, or an (r, S) matrix for S
    statistics at once (one interval each). Resamples are drawn in blocks of at most
    `block_cells` counts, so memory stays bounded whatever G is. The same `seed`, inputs and
    block size give the same intervals."""
    if not 0 < level < 1:
        raise ValueError("level must lie between 0 and 1")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be between 1 and {MAX_RESAMPLES}")
    sizes = np.asarray(sizes)
    rng = np.random.default_rng(seed if isinstance(seed, int) else list(seed))
    block = max(1, min(resamples, block_cells // max(1, len(sizes))))
    parts = []
    done = 0
    while done < resamples:
        n = min(block, resamples - done)
        values = np.asarray(statistic(resample_counts(sizes, n, rng), rng), dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.shape[0] != n:
            raise ValueError("the statistic must return one value (or row) per resample")
        parts.append(values)
        done += n
    return percentile_intervals(np.concatenate(parts), level)


def percentile_intervals(values: np.ndarray, level: float = DEFAULT_LEVEL) -> list[Interval]:
    """Per column of (R, S) `values`: the central `level` percentile interval (linear
    interpolation, as `numpy.quantile`), ignoring resamples where the statistic is NaN."""
    alpha = (1 - level) / 2
    values = np.asarray(values, dtype=np.float64)
    values = np.where(np.isfinite(values), values, np.nan)
    defined = ~np.all(np.isnan(values), axis=0)
    bounds = np.full((2, values.shape[1]), np.nan)
    if defined.any():
        bounds[:, defined] = np.nanquantile(values[:, defined], [alpha, 1 - alpha], axis=0)
    return [
        Interval(float(lo) if ok else None, float(hi) if ok else None, level, values.shape[0])
        for lo, hi, ok in zip(bounds[0], bounds[1], defined, strict=True)
    ]


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (a statistic undefined in a resample)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# -------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired right/wrong outcomes.

    `table[i][j]`: rows where A is right (i=0) or wrong (i=1) and B right (j=0) or wrong
    (j=1). The discordant pairs are `broken` (A right, B wrong) and `fixed` (A wrong, B
    right); under the null both are equally likely, so the p-value is the exact two-sided
    binomial test of `fixed` among `broken + fixed` at 1/2."""

    both_right: int
    broken: int
    fixed: int
    both_wrong: int
    p_value: float

    @property
    def table(self) -> list[list[int]]:
        return [[self.both_right, self.broken], [self.fixed, self.both_wrong]]


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """The exact McNemar test of two boolean arrays of the same rows."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("both evaluations need the same rows")
    codes = np.bincount(a.astype(np.int64) * 2 + b.astype(np.int64), minlength=4)
    both_wrong, fixed, broken, both_right = (int(x) for x in codes)
    return McNemar(both_right, broken, fixed, both_wrong, binomial_two_sided(fixed, broken))


def mcnemar_counts(both_right: int, broken: int, fixed: int, both_wrong: int) -> McNemar:
    return McNemar(both_right, broken, fixed, both_wrong, binomial_two_sided(fixed, broken))


def binomial_two_sided(k1: int, k2: int) -> float:
    """Exact two-sided p-value of observing a split (k1, k2) of n = k1 + k2 fair coin flips:
    twice the smaller tail, at most 1 (the binomial is symmetric at p = 1/2, so this is the
    sum of the probabilities of every outcome no more likely than the observed one).

    The tail is summed in log space from the observed count down with the ratio
    pmf(k-1)/pmf(k) = k / (n-k+1), so a million discordant pairs cost one cumulative sum."""
    if k1 < 0 or k2 < 0:
        raise ValueError("counts must be non-negative")
    n = k1 + k2
    m = min(k1, k2)
    if n == 0 or 2 * m == n:
        return 1.0
    # log pmf(m) = log C(n, m) - n log 2
    top = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) - n * math.log(2)
    k = np.arange(m, 0, -1, dtype=np.float64)  # m, m-1, ..., 1
    steps = np.log(k) - np.log(n - k + 1)  # log pmf(k-1) - log pmf(k)
    logs = np.concatenate(([top], top + np.cumsum(steps)))
    peak = logs.max()
    tail = math.exp(peak) * float(np.sum(np.exp(logs - peak)))
    return min(1.0, 2.0 * tail)


# ------------------------------------------------- sums by group, and slice tests


class GroupSums:
    """Per resample, sums of count columns by class: (R, width) from (R, G), for the groups
    j selected by `where` (all by default), into column cls[j]. The gather order and the
    class boundaries are worked out once; each call is one gather and one reduceat. (The
    shape `bootstrap` statistics need to turn group counts into per-class counts.)"""

    def __init__(self, cls: np.ndarray, width: int, where: np.ndarray | None = None) -> None:
        cls = np.asarray(cls, dtype=np.int64)
        cols = np.arange(len(cls)) if where is None else np.flatnonzero(where)
        c = cls[cols]
        order = np.argsort(c, kind="stable")
        self.index = cols[order]
        sorted_cls = c[order]
        self.starts = np.flatnonzero(np.r_[True, sorted_cls[1:] != sorted_cls[:-1]])
        self.targets = sorted_cls[self.starts] if len(sorted_cls) else sorted_cls
        self.width = width

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((values.shape[0], self.width), dtype=np.float64)
        if len(self.index):
            out[:, self.targets] = np.add.reduceat(values[:, self.index], self.starts, axis=1)
        return out


def normal_cdf(z: np.ndarray | float) -> np.ndarray:
    """The standard normal distribution function, elementwise (via erfc: exact in the
    tails, where 1 - Phi(-z) would round to 0)."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-z / math.sqrt(2.0))


def proportion_below(
    right: np.ndarray, rows: np.ndarray, total_right: int, total_rows: int
) -> np.ndarray:
    """One-sided p-values that each slice's proportion (right / rows) is below the rest's
    ((total_right - right) / (total_rows - rows)): the two-proportion z-test with the pooled
    proportion and Yates' continuity correction (without it the normal tail is too thin
    for proportions near 0 or 1, and a slice test at 0.05 / 8 rejects a third too often).
    1.0 where the test is undefined (an empty side, or a pooled proportion of 0 or 1: no
    difference to detect)."""
    x1 = np.asarray(right, dtype=np.float64)
    n1 = np.asarray(rows, dtype=np.float64)
    x2, n2 = total_right - x1, total_rows - n1
    out = np.ones(x1.shape)
    ok = (n1 > 0) & (n2 > 0)
    pooled = np.nan_to_num(ratio(x1 + x2, n1 + n2))
    inverse = 1 / np.where(ok, n1, 1) + 1 / np.where(ok, n2, 1)
    se = np.sqrt(np.where(ok, pooled * (1 - pooled) * inverse, 0.0))
    ok &= se > 0
    correction = 0.5 * inverse
    z = (ratio(x1, n1) - ratio(x2, n2) + correction) / np.where(ok, se, 1.0)
    out[ok] = normal_cdf(z[ok])
    return out


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): a hypothesis is rejected at false
    discovery rate q when its adjusted p-value is at most q."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def macro_scores(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(R, 3) macro precision, recall and F1 per resample from per-class counts (R, K) of
    true positives, predictions and support, as `dyff.metrics.class_scores` computes them
    (classes neither present nor predicted are left out)."""
    precision = np.nan_to_num(ratio(tp, predicted))
    recall = np.nan_to_num(ratio(tp, support))
    f1 = np.nan_to_num(ratio(2 * precision * recall, precision + recall))
    seen = (support > 0) | (predicted > 0)
    n_seen = seen.sum(axis=1)
    return np.stack(
        [ratio((x * seen).sum(axis=1), n_seen) for x in (precision, recall, f1)], axis=1
    )
