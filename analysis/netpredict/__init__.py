"""Predict, then check: the NQM's batch-size scaling of a network against its
measured scaling (``python -m analysis net-predict``).

:mod:`.mapping` maps the target (L_target − L_floor) and the optimizers to the
NQM's families and preconditioning powers; :mod:`.reference` trains the
reference run, estimates the NQM at its checkpoints and measures the floor;
:mod:`.prediction` tunes the NQM study and predicts one setting's expected-loss
crossing and first-passage law; :mod:`.measured` reads a ``net-scaling`` sweep
back; :mod:`.compare` holds the two against each other with the measurement's
error; :mod:`.claims` judges the paper's four claims; :mod:`.pipeline` runs it
all; :mod:`.report` writes the files and :mod:`.plots` draws the figures.

References:
    Zhang et al. (2019), Which algorithmic choices matter at which batch sizes?
    Insights from a noisy quadratic model, sections 3-5 and appendix E.
"""
