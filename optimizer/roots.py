"""Brent's root finder in plain Python, step for step scipy.optimize.brentq (scipy/optimize/Zeros/brentq.c).

Why not scipy: once Pyomo is imported, any `import scipy...` runs Pyomo's deferred-import hook for
scipy, which imports scipy.stats, scipy.integrate and scipy.spatial (pyomo.common.dependencies,
_finalize_scipy): 0.4-2 s, several times a tiny plan's whole run (issue 13, start-up). The same
algorithm in the same floating-point operations returns the same root (tests/optimizer/test_roots.py
compares the two).
"""

from __future__ import annotations

import math
from collections.abc import Callable

_RTOL = 4 * 2.220446049250313e-16  # scipy's default rtol: 4 x machine epsilon


def brentq(
    f: Callable[[float], float], a: float, b: float, xtol: float = 2e-12, rtol: float = _RTOL, maxiter: int = 100
) -> float:
    """A root of f in [a, b], where f(a) and f(b) differ in sign; scipy.optimize.brentq's iterates."""
    xpre, xcur = float(a), float(b)
    xblk = fblk = spre = scur = 0.0
    fpre, fcur = float(f(xpre)), float(f(xcur))
    if fpre * fcur > 0:
        raise ValueError("f(a) and f(b) must have different signs")
    if fpre == 0:
        return xpre
    if fcur == 0:
        return xcur
    for _ in range(maxiter):
        if fpre != 0 and fcur != 0 and math.copysign(1.0, fpre) != math.copysign(1.0, fcur):
            xblk, fblk = xpre, fpre
            spre = scur = xcur - xpre
        if abs(fblk) < abs(fcur):
            xpre, xcur, xblk = xcur, xblk, xcur
            fpre, fcur, fblk = fcur, fblk, fcur
        delta = (xtol + rtol * abs(xcur)) / 2
        sbis = (xblk - xcur) / 2
        if fcur == 0 or abs(sbis) < delta:
            return xcur
        if abs(spre) > delta and abs(fcur) < abs(fpre):
            if xpre == xblk:
                stry = -fcur * (xcur - xpre) / (fcur - fpre)  # interpolate
            else:
                dpre = (fpre - fcur) / (xpre - xcur)
                dblk = (fblk - fcur) / (xblk - xcur)
                stry = -fcur * (fblk * dblk - fpre * dpre) / (dblk * dpre * (fblk - fpre))  # extrapolate
            if 2 * abs(stry) < min(abs(spre), 3 * abs(sbis) - delta):
                spre, scur = scur, stry  # good short step
            else:
                spre = scur = sbis  # bisect
        else:
            spre = scur = sbis  # bisect
        xpre, fpre = xcur, fcur
        xcur += scur if abs(scur) > delta else (delta if sbis > 0 else -delta)
        fcur = float(f(xcur))
    raise RuntimeError(f"brentq did not converge in {maxiter} iterations")
