r"""nqm: the noisy quadratic model of batch-size scaling (Zhang et al., 2019).

Symbol table (one for the whole project):

=================  ===========  ================================================
symbol             name         meaning
=================  ===========  ================================================
:math:`h_i`        ``h``        curvature of mode ``i`` (eigenvalue of H)
:math:`c_i`        ``c``        per-example gradient-noise variance (batch: c/B)
:math:`E\theta_0^2` ``init_sq`` initial second moment of mode ``i``
:math:`w_i`        ``weight``   multiplicity of mode ``i`` (compressed problems)
:math:`\alpha`     ``lr``       learning rate (float or schedule)
:math:`\beta`      ``momentum`` heavy-ball coefficient, m <- beta m + P^-1 g
:math:`\gamma`     ``ema``      iterate-averaging decay
:math:`p`          ``precond_power``  preconditioner P = H^p
:math:`B`          ``batch_size``     mini-batch size (int or BatchSchedule)
:math:`t`          ``steps``    number of updates
=================  ===========  ================================================

Loss :math:`L(\theta) = \tfrac12 \sum_i w_i h_i \theta_i^2`; the gradient of a
mini-batch is :math:`H\theta + \varepsilon`, :math:`\operatorname{Cov}\varepsilon =
C/B`. The effective learning rate of momentum is :math:`\alpha/(1-\beta)`.
"""

from . import (
    adam,
    arguments,
    batch_ramp,
    closed_form,
    critical_batch,
    families,
    io,
    noise_scale,
    runtime,
    search,
)
from .batch_schedule import BatchSchedule, RampShape
from .dynamics import (
    doubled_modes,
    expected_loss,
    is_stable,
    max_stable_lr,
    risk_terms,
    steady_state_loss,
)
from .montecarlo import MonteCarloResult, NoiseModel, first_passage_steps, simulate
from .optimizer import (
    Constant,
    CosineWarmup,
    DecayShape,
    FromCallable,
    LinearDecay,
    Optimizer,
    PiecewiseConstant,
    Schedule,
    WarmupStableDecay,
)
from .polynomial_floor import polynomial_floor
from .problem import NQMProblem
from .search import (
    Family,
    TuneResult,
    best_steps,
    examples_to_target,
    steps_to_target,
)

__all__ = [
    "NQMProblem",
    "Optimizer",
    "Schedule",
    "Constant",
    "PiecewiseConstant",
    "LinearDecay",
    "WarmupStableDecay",
    "CosineWarmup",
    "DecayShape",
    "FromCallable",
    "expected_loss",
    "risk_terms",
    "doubled_modes",
    "polynomial_floor",
    "is_stable",
    "max_stable_lr",
    "steady_state_loss",
    "closed_form",
    "adam",
    "arguments",
    "batch_ramp",
    "critical_batch",
    "search",
    "families",
    "noise_scale",
    "io",
    "runtime",
    "steps_to_target",
    "examples_to_target",
    "best_steps",
    "BatchSchedule",
    "RampShape",
    "Family",
    "TuneResult",
    "simulate",
    "first_passage_steps",
    "MonteCarloResult",
    "NoiseModel",
]
