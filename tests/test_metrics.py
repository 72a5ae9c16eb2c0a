import numpy as np
import pytest
from scipy import stats

from fewshot.engine.metrics import mean_confidence_interval


def test_ci_matches_normal_approximation():
    rng = np.random.default_rng(0)
    accs = rng.uniform(20, 100, size=600)
    mean, ci = mean_confidence_interval(accs.tolist())
    assert mean == pytest.approx(accs.mean())
    expected = stats.norm.ppf(0.975) * accs.std(ddof=1) / np.sqrt(len(accs))
    assert ci == pytest.approx(expected, rel=1e-12)
    # for many episodes the normal and Student-t intervals agree
    t = stats.t.ppf(0.975, len(accs) - 1) * stats.sem(accs)
    assert ci == pytest.approx(t, rel=5e-3)


def test_ci_edge_cases():
    assert mean_confidence_interval([50.0]) == (50.0, 0.0)
    assert mean_confidence_interval([40.0, 40.0])[1] == 0.0
    with pytest.raises(ValueError):
        mean_confidence_interval([])
