"""analysis: studies built on :mod:`nqm` and :mod:`kfac_spectra`.

Batch-size scaling studies, symbolic audits of the NQM paper's equations, and the
figures. The command line lives in ``python -m analysis``.
"""
