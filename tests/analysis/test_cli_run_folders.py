"""The output folders of ``python -m analysis nqm-scaling`` and ``net-scaling``:
one run per folder, checksummed manifests, verified resumes, and no folder
created before every option is validated.

Oracles: hashlib's SHA-256 of the bytes on disk and the directory listing.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from analysis.__main__ import main
from nqm.run_folder import CorruptFileError, open_run_folder, verify_folder

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netscale_workloads

NQM_TINY = [
    "nqm-scaling", "--dim", "20", "--batch-sizes", "1,4", "--powers", "0",
    "--targets", "0.05", "--families", "sgd", "--threshold-targets", "0.1",
    "--bcrit-targets", "", "--ramp-budgets", "", "--fixed-momentum", "0",
]  # fmt: skip
NET_TINY = [
    "net-scaling", "--model", "netscale_workloads:small_mlp",
    "--data", "netscale_workloads:blobs", "--target", "0.6", "--optimizers", "sgd",
    "--batch-sizes", "4,8", "--trials", "2", "--max-steps", "40",
    "--eval-every", "5", "--n-boot", "5", "--workers", "1",
]  # fmt: skip


def _listed_files_match_disk(folder: Path) -> dict:
    manifest = verify_folder(folder)
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (".lock", "manifest.json")
    }
    assert set(manifest["files"]) == on_disk
    for name, rec in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    return manifest


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_nqm_scaling_folders_are_owned_by_one_run(tmp_path, capsys):
    out, figs = tmp_path / "out", tmp_path / "figs"
    argv = [*NQM_TINY, "--out", str(out), "--figures", str(figs)]
    assert main(argv) == 0
    capsys.readouterr()
    manifest = _listed_files_match_disk(out)
    assert manifest["complete"] is True and manifest["command"] == "nqm-scaling"
    assert "records.csv" in manifest["files"]
    assert "loss_threshold.png" in _listed_files_match_disk(figs)["files"]
    records = (out / "records.csv").read_bytes()
    with open_run_folder(out, command="holder-of-out"):
        assert main(argv) == 2
        assert "holder-of-out" in _one_line(capsys)
    with open_run_folder(figs, command="holder-of-figs"):
        assert main(argv) == 2
        assert "holder-of-figs" in _one_line(capsys)
    assert (out / "records.csv").read_bytes() == records


@pytest.mark.parametrize(
    "bad",
    [
        ["--batch-sizes", "0"],
        ["--families", "nope"],
        ["--device", "no-such-device"],
        ["--problem", "missing.npz"],
    ],
)
def test_nqm_scaling_bad_option_creates_no_folder(tmp_path, capsys, bad):
    out, figs = tmp_path / "a" / "out", tmp_path / "b" / "figs"
    assert main([*NQM_TINY, *bad, "--out", str(out), "--figures", str(figs)]) == 2
    _one_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_net_scaling_resumes_only_from_verified_files(tmp_path, capsys):
    out, figs = tmp_path / "out", tmp_path / "figs"
    argv = [*NET_TINY, "--out", str(out), "--figures", str(figs)]
    assert main(argv) == 0
    manifest = _listed_files_match_disk(out)
    assert {"trials.jsonl", "steps.csv", "sweep.json"} <= set(manifest["files"])
    trials = (out / "trials.jsonl").read_text()
    assert main(argv) == 0  # resumed: nothing new to train, the same trials
    assert (out / "trials.jsonl").read_text() == trials
    _listed_files_match_disk(out)
    capsys.readouterr()
    (out / "trials.jsonl").write_text(trials.replace('"sgd"', '"adam"', 1))
    assert main(argv) == 2
    assert "trials.jsonl: its checksum differs" in _one_line(capsys)
    with pytest.raises(CorruptFileError):
        verify_folder(out)


def test_net_scaling_bad_option_creates_no_folder(tmp_path, capsys):
    out = tmp_path / "a" / "out"
    assert main([*NET_TINY, "--trials", "0", "--out", str(out)]) == 2
    _one_line(capsys)
    assert not (tmp_path / "a").exists()
