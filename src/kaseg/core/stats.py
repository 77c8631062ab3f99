"""Paired statistics for comparisons over seeds.

One seed fixes the student's initial weights, the data order and every augmentation in every arm
of a comparison, so arms are compared seed by seed: the paired difference ``arm - baseline`` has
far less spread than either arm, and its 95% confidence interval (Student t over seeds) is what a
verdict follows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

# two-sided 95% critical values of Student's t, t_{0.975, df}, for df = 1..30
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959964


def t_critical(df: int) -> float:
    """``t_{0.975, df}``: exact table to df 30, Cornish-Fisher expansion beyond (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df = {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass
class Summary:
    """mean, sample standard deviation and 95% CI of the mean of ``n`` values."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(values: list[float]) -> Summary:
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = statistics.stdev(values)
    half = t_critical(n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def paired(arm: dict[int, float], baseline: dict[int, float]) -> Summary:
    """The paired difference ``arm - baseline`` over the seeds both have."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise ValueError("the two arms share no seed")
    return summarize([arm[s] - baseline[s] for s in seeds])


def verdict(diff: Summary, target: float = 0.0) -> str:
    """What the interval (not the mean) says about ``arm - baseline``."""
    if diff.n < 2:
        return "one seed: no interval"
    if diff.low > target:
        return "better" if target == 0 else f"better by more than {target:g}"
    if diff.high < 0:
        return "worse"
    return "no resolved difference"
