"""The report of a prediction: Markdown for people, and the one place files are
written.

:func:`markdown` renders the document of
:func:`.pipeline.predict_and_check` (the ``prediction.json`` content).
:func:`write_folder` writes every output file of ``net-predict`` through an
owned :class:`nqm.run_folder.RunFolder`: JSON, text, CSV tables and figures,
each atomically and checksummed; the caller writes ``manifest.json`` last
(:meth:`~nqm.run_folder.RunFolder.finish`), so a folder with a complete
manifest is complete.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nqm.run_folder import RunFolder

__all__ = ["OutputFile", "write_folder", "markdown"]

#: ``(name, payload)``: a ``.json`` name takes any JSON-ready object, ``.md``
#: and ``.toml`` a string, ``.csv`` a list of row mappings, and a name without
#: suffix a matplotlib figure (saved as PNG and PDF).
OutputFile = tuple[str, Any]


def write_folder(
    folder: RunFolder,
    files: Sequence[OutputFile],
    *,
    recorded: Sequence[str] = (),
) -> None:
    """Write ``files`` into ``folder`` (its manifest follows with
    :meth:`~nqm.run_folder.RunFolder.finish`, once the run is done).

    Args:
        folder: the output folder, owned by this run
            (:func:`nqm.run_folder.open_run_folder`).
        files: the outputs (see :data:`OutputFile`).
        recorded: names of files already written into the folder by other
            means (the reference run's report figures), checksummed into the
            manifest.

    Raises:
        ValueError: for a name with an unknown suffix.
    """
    for name, payload in files:
        suffix = name.rsplit(".", 1)[1] if "." in name else ""
        if suffix == "json":
            folder.write_json(name, payload)
        elif suffix in ("md", "toml"):
            folder.write_text(name, payload)
        elif suffix == "csv":
            columns = list(dict.fromkeys(k for row in payload for k in row))
            folder.write_csv(name, payload, columns)
        elif suffix == "":
            folder.save_figure(payload, name)
        else:
            raise ValueError(f"output {name!r}: unknown suffix {suffix!r}")
    for name in recorded:
        folder.record(name)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _claims_table(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| claim | verdict | numbers |", "|---|---|---|"]
    for c in claims:
        nums = []
        for p in c["parts"]:
            if "a" in p:
                a, b = p["a"], p["b"]
                fa = "–" if a is None else (
                    f"{_num(a['value'])} [{_num(a['low'])}, {_num(a['high'])}]"
                )  # fmt: skip
                fb = "–" if b is None else (
                    f"{_num(b['value'])} [{_num(b['low'])}, {_num(b['high'])}]"
                )  # fmt: skip
                nums.append(f"{p['comparison']}: {fa} vs {fb} ({p['verdict']})")
            elif "speedup_small" in p:
                nums.append(
                    f"{p['comparison']}: ×{_num(p['speedup_small'])} at "
                    f"B={p['small_batch']}, ×{_num(p['speedup_large'])} at "
                    f"B={p['large_batch']} ({p['verdict']})"
                )
            else:
                nums.append(f"{p['comparison']}: too few points ({p['verdict']})")
        lines.append(
            f"| {c['claim']} | **{c['verdict']}** | "
            f"{'; '.join(nums) or 'not measured'} |"
        )
    return lines


def _start_warnings(doc: Mapping[str, Any]) -> list[str]:
    """A line per checkpoint whose NQM starts at or below its target."""
    lines = []
    for step, est in doc.get("estimates", {}).items():
        start, target = est["nqm_initial_loss"], doc["checkpoints"][step]["nqm_target"]
        if start <= target:
            lines += [
                f"**Checkpoint {step}: the estimated NQM starts at loss "
                f"{_num(start)}, at or below its target {_num(target)}, so every "
                "predicted step count is 0** (the network's loss is far from "
                "quadratic there; `--target-mapping relative` keeps the fraction "
                "of the way to the floor instead).",
                "",
            ]
    return lines


def markdown(doc: Mapping[str, Any]) -> str:
    """The Markdown report of a ``prediction.json`` document."""
    t = doc["target"]
    lines = [
        "# NQM prediction of batch-size scaling",
        "",
        f"Target {_num(t['network_target'])} on the network's metric; loss floor "
        f"{_num(t['floor'])} ({t['floor_source']}); NQM target "
        f"{_num(t['nqm_target'])} ({t['mapping']} mapping, "
        f"{_num(t['scale'])} x (L_target − L_floor)). Primary checkpoint: step "
        f"{doc['primary_checkpoint']}.",
        "",
        *_start_warnings(doc),
        "## Critical batch size per optimizer",
        "",
        "| optimizer | NQM family, p | predicted B_crit | measured B_crit [interval] |",
        "|---|---|---|---|",
    ]
    # "extrapolated": the fitted B_crit lies outside the batch sizes studied
    for name, e in doc["optimizers"].items():
        m = e["measured"]
        meas = (
            "not measured"
            if m is None
            else f"{_num(m['b_crit'])} [{_num(m['b_crit_low'])}, "
            f"{_num(m['b_crit_high'])}]"
        )
        bc = e["predicted"]["b_crit"]
        outside = bc is not None and math.isfinite(bc)
        outside = outside and not e["predicted"]["b_crit_in_range"]
        mark = " (extrapolated)" if outside else ""
        lines.append(
            f"| {name} | {e['family']}, {e['precond_power']:g} | "
            f"{_num(e['predicted']['b_crit'])}{mark} | {meas} |"
        )
    lines += ["", "## Steps to target (predicted / measured, log-ratio)", ""]
    for name, e in doc["optimizers"].items():
        lines.append(f"**{name}**: " + ", ".join(
            f"B={r['batch_size']}: {_num(r['predicted'])}/{_num(r['measured'])} "
            f"({_num(r['log_ratio'], 2)})"
            for r in e["comparison"]
        ) if e["comparison"] else f"**{name}**: predicted " + ", ".join(
            f"B={b}: {_num(s)}"
            for b, s in zip(e["predicted"]["batch_sizes"], e["predicted"]["steps"],
                            strict=True)
        ))  # fmt: skip
        sens = e["predicted"]["sensitivity"]
        if sens:
            lines.append(
                "  sensitivity of B_crit to p: "
                + ", ".join(f"p={p}: {_num(v['b_crit'])}" for p, v in sens.items())
            )
        lines.append("")
    settings = [
        (n, e["settings"]) for n, e in doc["optimizers"].items() if e["settings"]
    ]
    if settings:
        lines += [
            "## Like with like: the measured best settings, K seeds",
            "",
            "| optimizer | B | mean-curve crossing | predicted E[L] crossing "
            "[MC window] | dE[L]/dt | median single run | predicted median "
            "first passage | KS p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in settings:
            for p in s["points"]:
                lo, hi = p["window"]
                lines.append(
                    f"| {name} | {p['batch_size']} | {_num(p['mean_crossing'])} | "
                    f"{_num(p['predicted_crossing'])} [{_num(lo)}, {_num(hi)}] | "
                    f"{_num(p['slope'])} | {_num(p['single_median'])} | "
                    f"{_num(p['predicted_first_passage_median'])} | "
                    f"{_num(p['ks_pvalue'], 2)} |"
                )
            for kind, v in s["b_crit"].items():
                m = v["measured"]
                lines.append(
                    f"\n{name}, B_crit of the {kind} crossings: predicted "
                    f"{_num(v['predicted'])}, measured {_num(m['value'])} "
                    f"[{_num(m['low'])}, {_num(m['high'])}] "
                    f"({'agrees' if v['agrees'] else 'disagrees'})"
                )
        lines.append("")
    lines += ["## Rankings (fewest steps first)", ""]
    for which, r in doc["rankings"].items():
        lines.append(
            f"- {which} batch (B={r['batch_size']}): predicted "
            f"{', '.join(r['predicted'])}"
            + (f"; measured {', '.join(r['measured'])}" if "measured" in r else "")
        )
    lines.append("")
    for kind, claims in doc["claims"].items():
        lines += [f"## Claims of Zhang et al. (2019), {kind}", ""]
        lines += _claims_table(claims)
        lines.append("")
    lines += [
        "## Sensitivity to the checkpoint (B_crit per optimizer)",
        "",
        "| checkpoint | " + " | ".join(doc["optimizers"]) + " | NQM target |",
        "|---|" + "---|" * (len(doc["optimizers"]) + 1),
    ]
    for step, per in doc["checkpoints"].items():
        lines.append(
            f"| {step} | "
            + " | ".join(_num(per.get(n, {}).get("b_crit")) for n in doc["optimizers"])
            + f" | {_num(per['nqm_target'])}"
            + " |"
        )
    lines += [
        "",
        "What the NQM leaves out: the loss is not quadratic, H and C are not "
        "codiagonal in one eigenbasis, and the gradient noise depends on the "
        "parameters. Absolute step counts absorb all three; the S_min-normalised "
        "curves and B_crit compare the shape.",
        "",
    ]
    return "\n".join(lines)
