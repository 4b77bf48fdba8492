"""Symbolic derivations of the NQM dynamics and an audit of the paper's appendix.

Everything is derived with sympy from the per-dimension update rules of SGD,
heavy-ball momentum, the EMA of iterates and the ``H**p`` preconditioner, using only
``E[eps] = 0`` and ``V[eps] = c / B`` for the minibatch noise:

* :mod:`~analysis.symbolic.recursions`: means, covariances and second-moment
  systems (eqns 17-21, 35-38).
* :mod:`~analysis.symbolic.ztransform`: second-order recurrences, Z-transforms,
  residues and geometric sums (eqns 25-31, 41-47).
* :mod:`~analysis.symbolic.theorems`: transients, exact second moments and the
  bounds of Theorems 1 and 2 (eqns 32-34, 48-49), the SGD risk.
* :mod:`~analysis.symbolic.claims`: critical damping (after eqn 22) and the
  effective learning rate of momentum (appendix E.3).
* :mod:`~analysis.symbolic.preconditioning`: ``h -> h**(1-p)``, ``c -> c h**(-2p)``.
* :mod:`~analysis.symbolic.stated` (with ``stated_momentum``, ``stated_ema``):
  the appendix's equations as printed; :mod:`~analysis.symbolic.audit` (with
  ``audit_solutions``, ``audit_bounds``): their verdicts;
  :mod:`~analysis.symbolic.report`: the Markdown/JSON report of
  ``python -m analysis verify-derivations``.
* :mod:`~analysis.symbolic.numeric`: the closed forms as numpy functions.
* :mod:`~analysis.symbolic.kfac_identities`: Kronecker identities used by K-FAC.

Submodules are imported on demand; importing this package does no work.

References:
    Zhang et al. (2019), "Which Algorithmic Choices Matter at Which Batch Sizes?
    Insights From a Noisy Quadratic Model", appendices A-E.
"""
