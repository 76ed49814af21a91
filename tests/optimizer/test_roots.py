"""optimizer.roots.brentq returns what scipy.optimize.brentq returns, root for root."""

import numpy as np
import pytest
from scipy.optimize import brentq as scipy_brentq

from optimizer.cashflows import npv
from optimizer.roots import brentq


@pytest.mark.parametrize("seed", range(40))
def test_same_root_as_scipy_on_cash_flows(seed):
    rng = np.random.default_rng(seed)
    cash = np.concatenate([-rng.uniform(1e5, 1e7, rng.integers(1, 12)), rng.uniform(-1e5, 3e6, rng.integers(12, 240))])
    low, high = -0.99, 10.0
    if npv(cash, low) * npv(cash, high) > 0:
        pytest.skip("no sign change in the bracket")
    f = lambda r: npv(cash, r)  # noqa: E731
    assert brentq(f, low, high, xtol=1e-10) == scipy_brentq(f, low, high, xtol=1e-10)


@pytest.mark.parametrize(
    ("f", "a", "b"),
    [
        (lambda x: x**3 - 2 * x - 5, 2.0, 3.0),
        (lambda x: np.cos(x) - x, 0.0, 1.0),
        (lambda x: (x - 1.0) ** 2 * (x + 2.0), -3.0, 0.5),
        (lambda x: np.exp(x) - 1e6, 0.0, 20.0),
        (lambda x: x, -1.0, 1.0),
        (lambda x: x - 3.0, 3.0, 5.0),  # root at an end
    ],
)
def test_same_root_as_scipy_on_functions(f, a, b):
    assert brentq(f, a, b) == scipy_brentq(f, a, b)


def test_no_sign_change_is_an_error():
    with pytest.raises(ValueError):
        brentq(lambda x: x * x + 1, -1.0, 1.0)
