"""Measured batch-size scaling of real networks (``python -m analysis net-scaling``).

A *workload* (:mod:`.workload`) is a model, a data set, a loss and a target
metric. For every optimizer (:mod:`.optimizers`) and batch size, a fixed budget of
trials drawn by a scrambled quasi-random sequence over the optimizer's search
space is trained (:mod:`.trial`), each a pure function of the sweep seed and its
own identity, and planned as tasks (:mod:`.plan`) that
:func:`analysis.executor.run_plan` runs locally or on Ray. Every finished trial
is appended to a log (:mod:`.records`) so a killed sweep resumes; the tables
(steps to result, critical batch sizes with bootstrap intervals) come from the
recorded curves (:mod:`.results`) and drawn by :mod:`.plots`. :mod:`.sweep`
ties plan, executor and log together; :mod:`.config` is the command's block of
defaults; :mod:`.quadratic` writes the NQM as a network (an exact workload for
tests); :mod:`.archive` reads the public archive of Shallue et al. (2018) into
the same records.

References:
    Shallue et al. (2018), Measuring the effects of data parallelism on neural
    network training, section 3 (the tuning protocol).
    Zhang et al. (2019), Which algorithmic choices matter at which batch sizes?,
    section 4 and appendix F.
"""
