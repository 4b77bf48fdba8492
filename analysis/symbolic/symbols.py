"""The sympy symbols shared by every derivation in :mod:`analysis.symbolic`.

Notation follows the project's symbol table (``nqm`` package docstring): ``h`` is
the curvature of one eigen-direction, ``c`` the per-example gradient-noise
variance (the minibatch noise has variance ``c / B``), ``alpha`` the learning
rate, ``beta`` the heavy-ball momentum, ``gamma`` the EMA decay of the iterate
average and ``p`` the preconditioner power (``P = h**p``).

The paper's summation index is also called ``p``; here it is ``k`` so that it never
collides with the preconditioner power.
"""

from __future__ import annotations

import sympy as sp

alpha = sp.Symbol("alpha", positive=True)
beta = sp.Symbol("beta", positive=True)
gamma = sp.Symbol("gamma", positive=True)
h = sp.Symbol("h", positive=True)
c = sp.Symbol("c", positive=True)
B = sp.Symbol("B", positive=True)
p = sp.Symbol("p", real=True)

#: Step counter of the dynamics.
t = sp.Symbol("t", integer=True, nonnegative=True)
#: Summation index of the noise sums (the paper's ``p``).
k = sp.Symbol("k", integer=True, nonnegative=True)
#: Eigenvalue variable of characteristic polynomials.
lam = sp.Symbol("lambda")
#: Variable of the (unilateral) Z-transform.
z = sp.Symbol("Z")
#: Roots of a second-order recurrence; no assumptions, they may be complex.
r1, r2 = sp.symbols("r1 r2")
#: Sum and product of ``r1`` and ``r2`` (elementary symmetric functions).
s_sum, s_prod = sp.symbols("s_1 s_2")
#: ``A(theta(0)) = E[theta(0)**2]``, the initial second moment.
A0 = sp.Symbol("A_0", nonnegative=True)
#: Minibatch gradient noise of one step (mean 0, variance ``c / B``).
eps = sp.Symbol("epsilon")
