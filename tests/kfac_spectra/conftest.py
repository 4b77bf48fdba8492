"""kfac_spectra test settings: say in the summary when the external K-FAC oracle
(curvlinops) is missing, so that its skipped comparisons are not overlooked."""

from __future__ import annotations

import importlib

import pytest

ORACLE = "curvlinops"
INSTALL = (
    'pip install --no-deps "curvlinops-for-pytorch==3.0.1" einops einconv '
    "linear_operator"
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    try:
        importlib.import_module(ORACLE)
    except ImportError as err:
        reason = str(err)
    else:
        return
    terminalreporter.write_sep("=", "K-FAC oracle missing", yellow=True)
    terminalreporter.write_line(
        f"{ORACLE} cannot be imported ({reason}): the comparisons of the K-FAC "
        "factors with "
        f"it (tests/kfac_spectra/test_kfac_curvlinops.py) were skipped. "
        f"Install it without its dependencies (they would replace torch): {INSTALL}"
    )
