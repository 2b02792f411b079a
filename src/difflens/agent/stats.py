"""Statistics over agent grades (paper §4.1, Fig. 4): bootstrap summaries and a permutation test.

The agent is run R times per setting (ADL with i=0/5 model interactions, blackbox with i=0/5/50)
on every organism, and each run's final hypothesis is graded 1-5 by an LLM grader, possibly several
times and averaged, so a grade may be a non-integer such as 3.67. With R = 5 runs per organism the
point numbers alone say little, hence:

* :func:`summarize` - the mean grade and the shares of runs graded >= 2 ("broad objective found")
  and >= 4 ("specific objective found"), each with a percentile-bootstrap confidence interval over
  runs.
* :func:`summarize_grouped` - the same per organism, plus an ``"overall"`` entry whose bootstrap is
  stratified by organism and weighs every organism equally (see there for why).
* :func:`compare` - a one-sided permutation test that setting ``a`` (say ADL) grades higher than
  setting ``b`` (say blackbox); with grouped input the labels are permuted within each organism only.

Everything is seeded (``numpy.random.default_rng(seed)``): the same input and seed give the same
numbers, so a report can be regenerated bit for bit.

Note on the paper's own headline shares ("grade >= 2 for 91% of organisms"): there the threshold is
applied to each organism's grade averaged over its 5 runs and the share is over organisms. The
shares here are over runs (organism-balanced in ``"overall"``). For the paper's number, pass the
per-organism average grades as one flat sequence to :func:`summarize`; its bootstrap then resamples
organisms.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

GRADE_MIN = 1.0
GRADE_MAX = 5.0
OVERALL = "overall"

# Thresholds are compared with this slack so that an averaged grade that should be exactly 2 or 4
# but came out of floating-point arithmetic a hair below (e.g. a sum of thirds) still counts.
_THRESHOLD_EPS = 1e-9
# A permuted statistic that equals the observed one up to floating-point noise (a different
# summation order of the same numbers) must count as ">=": otherwise the identity permutation, and
# every relabelling that swaps equal grades, could be missed, and the p-value would be too small.
_STAT_TOL = 1e-9
# Upper bound on the number of array elements materialised at once by the resampling loops, so that
# memory stays small however many runs or replicates are asked for.
_CHUNK_ELEMENTS = 1 << 20


class Summary(BaseModel):
    """Point estimates and percentile-bootstrap intervals for one set of grades.

    ``n`` is the number of runs. The intervals are at the ``level`` passed to :func:`summarize`
    (95% by default). When the bootstrap distribution is degenerate (one run, or all grades equal)
    each interval collapses to its point value: resampling cannot show variation that the data do
    not have, and a collapsed interval says exactly that.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    mean: float
    mean_ci: tuple[float, float]
    share_ge2: float
    share_ge2_ci: tuple[float, float]
    share_ge4: float
    share_ge4_ci: tuple[float, float]


class Comparison(BaseModel):
    """Result of :func:`compare`: is setting ``a`` graded higher than setting ``b``?

    ``diff`` is mean(a) - mean(b), organism-balanced for grouped input (the mean over organisms of the
    per-organism difference). ``p_value`` is one-sided (H1: a > b) and never 0: with the +1
    correction its smallest value is 1 / (1 + n_perm). ``n_a`` and ``n_b`` count the runs that
    entered the test (for grouped input, only organisms present on both sides).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    diff: float
    p_value: float
    method: str
    n_a: int
    n_b: int


# ============================================================================================
# Input checks
# ============================================================================================


def _as_grades(grades: Sequence[float], what: str = "grades") -> np.ndarray:
    """A 1-D float array of grades in [1, 5], or ValueError saying what is wrong.

    Grades outside the scale are refused rather than clipped: a 0 or a 10 means a parsing or
    bookkeeping bug upstream, and folding it silently into the statistics would hide it.
    """
    if isinstance(grades, (str, bytes)):
        raise ValueError(f"{what}: expected a sequence of numbers, got a string {grades!r}")
    try:
        x = np.asarray(grades, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: expected a sequence of numbers ({e})") from None
    if x.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got an array of shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what}: no grades; at least one run is needed")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: grades must be finite numbers, got {x[~np.isfinite(x)][:3].tolist()}")
    bad = x[(x < GRADE_MIN) | (x > GRADE_MAX)]
    if bad.size:
        raise ValueError(f"{what}: grades must lie in [{GRADE_MIN:g}, {GRADE_MAX:g}], "
                         f"got {bad[:3].tolist()}")
    return x


def _check_count(value: int, name: str) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be at least 1, got {v}")
    return v


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be a confidence level strictly between 0 and 1, got {level!r}")
    return float(level)


# ============================================================================================
# Bootstrap
# ============================================================================================


def _indicators(x: np.ndarray) -> np.ndarray:
    """Rows: the grade itself, [grade >= 2], [grade >= 4]; the per-run quantities we average."""
    return np.stack([x,
                     (x >= 2.0 - _THRESHOLD_EPS).astype(float),
                     (x >= 4.0 - _THRESHOLD_EPS).astype(float)])


def _replicates(rng: np.random.Generator, x: np.ndarray, n_boot: int) -> np.ndarray:
    """Bootstrap replicates of (mean, share >= 2, share >= 4), shape (3, n_boot).

    Each replicate resamples the n runs with replacement. All three statistics come from the same
    resample, so they stay consistent with one another. Resamples are drawn in chunks to bound
    memory; the chunking is a function of n only, so results depend on nothing but input and seed.
    """
    n = x.size
    ind = _indicators(x)
    out = np.empty((3, n_boot))
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        for k in range(3):
            out[k, start:stop] = ind[k][idx].mean(axis=1)
    return out


def _ci(point: float, reps: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the replicates; the point itself when they do not vary.

    The degenerate case is snapped to the point explicitly because replicate means of identical
    numbers, summed in another order, can differ from the point in the last bit, and an interval
    that excludes its own point by 4e-16 would be noise presented as information.
    """
    if float(np.ptp(reps)) <= 1e-12 * max(1.0, abs(point)):
        return (point, point)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _summary(n: int, points: np.ndarray, reps: np.ndarray, level: float) -> Summary:
    mean, ge2, ge4 = (float(v) for v in points)
    return Summary(n=n,
                   mean=mean, mean_ci=_ci(mean, reps[0], level),
                   share_ge2=ge2, share_ge2_ci=_ci(ge2, reps[1], level),
                   share_ge4=ge4, share_ge4_ci=_ci(ge4, reps[2], level))


def summarize(grades: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95,
              seed: int = 0) -> Summary:
    """Mean grade and shares of runs graded >= 2 and >= 4, with percentile-bootstrap intervals.

    The bootstrap resamples runs with replacement ``n_boot`` times (a seeded numpy Generator) and
    takes the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of each statistic. The
    percentile method is used because the shares are bounded in [0, 1] and, with 5-ish runs, far
    from normal; its intervals stay inside the possible range, where a normal approximation would
    not. Note that with very few runs every bootstrap interval is too narrow (it cannot see
    variation the sample does not contain): with n = 1 the intervals collapse to the point.

    Raises ValueError for no grades, grades outside [1, 5] or not finite, ``n_boot < 1`` or a
    ``level`` not strictly between 0 and 1.
    """
    x = _as_grades(grades)
    n_boot = _check_count(n_boot, "n_boot")
    level = _check_level(level)
    rng = np.random.default_rng(seed)
    return _summary(x.size, _indicators(x).mean(axis=1), _replicates(rng, x, n_boot), level)


def summarize_grouped(grades: Mapping[str, Sequence[float]], *, n_boot: int = 10_000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Summary]:
    """:func:`summarize` for each organism, plus an ``"overall"`` entry (last in the dict).

    The overall numbers weigh every organism equally: the overall mean is the mean of the
    organism means, and likewise for the shares, whatever each organism's run count. Its bootstrap
    is stratified by organism to match: every replicate resamples runs within each organism
    separately (runs never move between organisms) and then averages the organism statistics with
    equal weights. Why: organisms are the units of interest (the paper reports "x% of organisms"),
    and run counts differ for incidental reasons (a rerun, a crashed run); pooling runs would let
    whichever organism happened to get more runs dominate the headline number.

    ``overall.n`` is the total number of runs. The per-organism entries are exactly what
    :func:`summarize` gives for that organism with the same seed. The overall bootstrap draws from
    one seeded Generator in sorted organism order, so the result does not depend on dict order.

    Raises ValueError for an empty mapping, an organism without grades, an organism named
    ``"overall"``, or any input :func:`summarize` refuses.
    """
    if not isinstance(grades, Mapping):
        raise ValueError(f"grades: expected a mapping organism -> grades, got {type(grades).__name__}")
    if not grades:
        raise ValueError("grades: no organisms")
    if OVERALL in grades:
        raise ValueError(f"grades: an organism may not be called {OVERALL!r}; that key holds the "
                         "organism-balanced summary")
    n_boot = _check_count(n_boot, "n_boot")
    level = _check_level(level)
    arrays = {str(k): _as_grades(v, f"grades[{k!r}]") for k, v in grades.items()}

    out = {k: summarize(x, n_boot=n_boot, level=level, seed=seed) for k, x in arrays.items()}

    rng = np.random.default_rng(seed)
    order = sorted(arrays)
    points = np.mean([_indicators(arrays[k]).mean(axis=1) for k in order], axis=0)
    reps = np.mean([_replicates(rng, arrays[k], n_boot) for k in order], axis=0)
    out[OVERALL] = _summary(sum(x.size for x in arrays.values()), points, reps, level)
    return out


# ============================================================================================
# Permutation test
# ============================================================================================


def _perm_sums(rng: np.random.Generator, pooled: np.ndarray, n_a: int, n_perm: int) -> np.ndarray:
    """For each of n_perm random relabellings of ``pooled``, the sum of the values labelled ``a``.

    A uniformly random permutation of the pooled runs, first n_a taken as ``a``, is a uniformly
    random split with the observed group sizes, which is what the permutation null requires.
    """
    m = pooled.size
    out = np.empty(n_perm)
    rows = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, n_perm, rows):
        stop = min(n_perm, start + rows)
        perm = rng.permuted(np.tile(pooled, (stop - start, 1)), axis=1)
        out[start:stop] = perm[:, :n_a].sum(axis=1)
    return out


def _maybe_empty(g: Sequence[float], what: str) -> np.ndarray | None:
    """The grades as an array, or None when there are none (an empty side is allowed here, to be
    dropped or refused by the caller)."""
    if not isinstance(g, (str, bytes)) and isinstance(g, (Sequence, np.ndarray)) and len(g) == 0:
        return None
    return _as_grades(g, what)


def _strata(a: Mapping[str, Sequence[float]] | Sequence[float],
            b: Mapping[str, Sequence[float]] | Sequence[float]
            ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The (a, b) grade arrays per stratum, and a phrase naming the design for ``method``."""
    a_map, b_map = isinstance(a, Mapping), isinstance(b, Mapping)
    if a_map != b_map:
        raise ValueError("compare: a and b must both be mappings organism -> grades, or both flat "
                         "sequences of grades")
    if not a_map:
        xa, xb = _maybe_empty(a, "a"), _maybe_empty(b, "b")  # type: ignore[arg-type]
        if xa is None or xb is None:
            raise ValueError(f"compare: {'a' if xa is None else 'b'} has no grades; nothing to compare")
        return [(xa, xb)], "permutation test"

    ga = {str(k): _maybe_empty(v, f"a[{k!r}]") for k, v in a.items()}  # type: ignore[union-attr]
    gb = {str(k): _maybe_empty(v, f"b[{k!r}]") for k, v in b.items()}  # type: ignore[union-attr]
    common = sorted(k for k in ga.keys() & gb.keys() if ga[k] is not None and gb[k] is not None)
    if not common:
        raise ValueError("compare: no organism has grades in both a and b; nothing to compare")
    strata = [(ga[k], gb[k]) for k in common]
    dropped = len(ga.keys() | gb.keys()) - len(common)
    what = f"stratified permutation test over {len(common)} organism{'s' if len(common) != 1 else ''}"
    if dropped:
        what += f" ({dropped} organism{'s' if dropped != 1 else ''} without runs on both sides ignored)"
    return strata, what  # type: ignore[return-value]


def compare(a: Mapping[str, Sequence[float]] | Sequence[float],
            b: Mapping[str, Sequence[float]] | Sequence[float], *, n_perm: int = 20_000,
            seed: int = 0) -> Comparison:
    """One-sided permutation test of "a grades higher than b" on the difference of means.

    Flat input: the statistic is mean(a) - mean(b); under H0 (a and b are exchangeable) every
    split of the pooled runs into groups of the observed sizes is equally likely, so the a/b labels
    are reshuffled ``n_perm`` times.

    Grouped input (organism -> grades, both sides): the statistic is the organism-balanced
    difference, the mean over organisms of mean(a_o) - mean(b_o), and labels are permuted *within*
    each organism only. Organisms differ far more in difficulty than the settings do (the paper's
    blackbox agents do well on Taboo and poorly on SDF), so a pooled shuffle would mix that into the
    null and, with unequal run counts per side, could even manufacture a difference out of nothing
    (Simpson's paradox). Only organisms with runs on both sides enter; the others are ignored and
    counted in ``method``.

    The p-value is (1 + #{permuted statistic >= observed}) / (1 + n_perm): counting the observed
    labelling as one of the permutations keeps the Monte-Carlo test exact (never anti-conservative)
    and the p-value never 0. Ties count as ">=" up to floating-point noise, so when a and b hold
    the same grades the p-value is >= 1/2 in expectation (the null distribution is symmetric) and
    exactly 1 when every grade is equal.

    Raises ValueError when there is nothing to compare (an empty side; no organism on both sides),
    when one side is a mapping and the other is not, for invalid grades, or ``n_perm < 1``.
    """
    n_perm = _check_count(n_perm, "n_perm")
    strata, what = _strata(a, b)
    rng = np.random.default_rng(seed)

    observed = 0.0
    diff = 0.0
    perm_total = np.zeros(n_perm)
    for xa, xb in strata:
        na, nb = xa.size, xb.size
        pooled = np.concatenate([xa, xb])
        total = float(pooled.sum())
        sa = float(xa.sum())
        # Same formula for the observed and the permuted statistic, so that they agree to the
        # last bits when a permutation reproduces the observed split.
        observed += sa / na - (total - sa) / nb
        diff += float(xa.mean() - xb.mean())  # reported: exactly 0 when a and b hold the same grades
        sums = _perm_sums(rng, pooled, na, n_perm)
        perm_total += sums / na - (total - sums) / nb
    k = len(strata)
    observed /= k
    diff /= k
    perm_total /= k

    exceed = int(np.count_nonzero(perm_total >= observed - _STAT_TOL))
    p = (1 + exceed) / (1 + n_perm)
    return Comparison(diff=diff, p_value=float(min(1.0, p)),
                      method=f"{what}, {n_perm:,} permutations",
                      n_a=sum(xa.size for xa, _ in strata), n_b=sum(xb.size for _, xb in strata))


__all__ = ["Comparison", "Summary", "compare", "summarize", "summarize_grouped",
           "GRADE_MIN", "GRADE_MAX", "OVERALL"]
