import math

import pytest

from kaseg.core.stats import paired, summarize, t_critical, verdict


def test_t_critical_table_and_expansion():
    assert t_critical(4) == pytest.approx(2.776445, abs=1e-6)
    assert t_critical(1) == pytest.approx(12.706205, abs=1e-6)
    # beyond the table, the expansion against known quantiles
    assert t_critical(40) == pytest.approx(2.021075, abs=1e-4)
    assert t_critical(120) == pytest.approx(1.979930, abs=1e-4)
    with pytest.raises(ValueError):
        t_critical(0)


def test_ci_of_hand_made_paired_differences():
    # arm - baseline per seed: 1, 2, 3, 4, 5 -> mean 3, sd sqrt(2.5), se sqrt(0.5)
    base = {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0, 4: 50.0}
    arm = {s: v + d for (s, v), d in zip(base.items(), [1, 2, 3, 4, 5])}
    d = paired(arm, base)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)  # 1.96318
    assert (d.n, d.mean, d.sd) == (5, pytest.approx(3.0), pytest.approx(math.sqrt(2.5)))
    assert d.low == pytest.approx(3 - half) and d.high == pytest.approx(3 + half)
    assert verdict(d) == "better"
    # the unpaired spread of either arm is huge; pairing removes it
    assert summarize(list(arm.values())).sd > 15


def test_verdict_follows_the_interval_not_the_mean():
    base = {0: 0.0, 1: 0.0, 2: 0.0}
    assert verdict(paired({0: 4.0, 1: -1.0, 2: 3.0}, base)) == "no resolved difference"  # mean +2
    assert verdict(paired({0: -1.0, 1: -1.2, 2: -0.9}, base)) == "worse"
    assert verdict(paired({0: 1.0}, {0: 0.0})) == "one seed: no interval"
    # only shared seeds are paired
    assert paired({0: 1.0, 1: 2.0, 7: 9.0}, {0: 0.0, 1: 0.0}).n == 2
