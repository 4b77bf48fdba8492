"""Render the appendix audit as Markdown (for people) and JSON (for machines).

References:
    Zhang et al. (2019), appendices B-D; :mod:`analysis.symbolic.audit`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from analysis.symbolic.audit import AuditEntry, Status

__all__ = ["audit_to_json", "render_markdown"]


def audit_to_json(entries: Sequence[AuditEntry]) -> str:
    """The entries as a JSON list of objects (one per equation).

    Args:
        entries: Audit entries.

    Returns:
        Pretty-printed JSON text.
    """
    return json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(entries: Sequence[AuditEntry]) -> str:
    """A Markdown report: summary, verdict table, then details per equation.

    Args:
        entries: Audit entries.

    Returns:
        Markdown text ending with a newline.
    """
    counts = Counter(e.status for e in entries)
    lines = [
        "# Audit of the NQM appendix (Zhang et al. 2019, eqns 17-49)",
        "",
        "Each printed equation is compared with a sympy derivation from the update "
        "rules (E[eps] = 0, V[eps] = c/B). "
        + ", ".join(f"{counts.get(s, 0)} {s.value}" for s in Status)
        + ".",
        "",
        "| Equation | Status | Note |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {e.equation} | {e.status.value} | {_cell(e.note)} |" for e in entries]
    lines.append("")
    for e in entries:
        lines += [
            f"## Equation {e.equation}: {e.status.value}",
            "",
            f"- Printed (as encoded): `{_cell(e.stated)}`",
            f"- Derived{' (corrected)' if e.status is Status.ERRATUM else ''}: "
            f"`{_cell(e.derived)}`",
            f"- Reading of the extraction: {_cell(e.interpretation)}",
            f"- Note: {_cell(e.note)}",
            "",
        ]
    return "\n".join(lines)
