"""Corrupt, incomplete and contended run directories of ``kfac_spectra``.

Oracles: hashlib's SHA-256 of the bytes on disk, the run's own uninterrupted
result (a report after ``--final-step`` equals ``estimate_nqm`` with that step),
and the rule that a bad run directory is one line on stderr with exit status 2,
never a traceback and never exit 0.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kfac_spectra import estimate_nqm
from kfac_spectra.__main__ import main
from kfac_spectra.checkpoints import load_checkpoint_arrays, step_dir
from kfac_spectra.train import RESUME_FILE, resolve_config, train
from nqm import NQMProblem
from nqm.run_folder import CorruptFileError, open_run_folder, verify_folder

TINY = {
    "model": "mlp",
    "data": "digits",
    "width": 1 / 64,
    "steps": 6,
    "batch_size": 32,
    "checkpoints": "0,3",
    "measure_examples": 48,
    "inverse_interval": 3,
}
RUN_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


class _Kill(RuntimeError):
    pass


def _kill_at(at: int):
    def callback(step: int, loss: float) -> None:
        if step == at:
            raise _Kill

    return callback


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and one killed after its checkpoint at step 3."""
    root = tmp_path_factory.mktemp("integrity")
    config = resolve_config(None, TINY)
    train(config, root / "done")
    with pytest.raises(_Kill):
        train(config, root / "killed", step_callback=_kill_at(5))
    return root


def _copy(runs: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs / name, tmp_path / name))


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_run_manifest_lists_every_file_with_its_checksum(runs):
    manifest = verify_folder(runs / "done")
    assert manifest["complete"] is True
    files = {
        p.relative_to(runs / "done").as_posix()
        for p in (runs / "done").rglob("*")
        if p.is_file() and p.name != ".lock" and p != runs / "done" / "manifest.json"
    }
    assert set(manifest["files"]) == files
    for name, rec in manifest["files"].items():
        data = (runs / "done" / name).read_bytes()
        assert rec == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    step = json.loads((step_dir(runs / "done", 3) / "manifest.json").read_text())
    for name in ("factors.npz", "stats.npz", "params.npz"):
        data = (step_dir(runs / "done", 3) / name).read_bytes()
        assert step["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    killed = verify_folder(runs / "killed")
    assert killed["complete"] is False
    assert [c["step"] for c in killed["checkpoints"]] == [0, 3]


@pytest.mark.parametrize("name", ["factors.npz", "stats.npz", "params.npz"])
def test_truncated_npz_is_one_line_naming_the_file(runs, tmp_path, capsys, name):
    run = _copy(runs, "done", tmp_path)
    _truncate(step_dir(run, 3) / name)
    with pytest.raises(CorruptFileError, match=f"step_000003/{name}: its checksum"):
        load_checkpoint_arrays(run, 3)
    with pytest.raises(CorruptFileError, match=name):
        estimate_nqm(run, 3)
    err = _one_line_error(capsys, main(["report", str(run)]))
    assert f"step_000003/{name}" in err and "restore it" in err
    # a rerun of the finished run does not report success over a corrupt file
    code = main(["run", "--out", str(run), *RUN_ARGS])
    assert name in _one_line_error(capsys, code)


def test_a_corrupted_file_with_intact_size_is_refused(runs, tmp_path, capsys):
    run = _copy(runs, "done", tmp_path)
    path = step_dir(run, 0) / "params.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="params.npz: its checksum"):
        load_checkpoint_arrays(run, 0)
    assert "params.npz" in _one_line_error(capsys, main(["report", str(run)]))


def test_truncated_resume_state_is_refused_on_resume(runs, tmp_path, capsys):
    run = _copy(runs, "killed", tmp_path)
    _truncate(run / RESUME_FILE)
    code = main(["run", "--out", str(run), *RUN_ARGS])
    err = _one_line_error(capsys, code)
    assert RESUME_FILE in err and "checksum" in err
    # a resume state the manifest does not vouch for is refused too
    run2 = _copy(runs, "killed", tmp_path / "b")
    manifest = json.loads((run2 / "manifest.json").read_text())
    del manifest["files"][RESUME_FILE]
    (run2 / "manifest.json").write_text(json.dumps(manifest))
    code = main(["run", "--out", str(run2), *RUN_ARGS])
    assert "not in the run manifest" in _one_line_error(capsys, code)


def test_incomplete_run_is_refused_unless_the_final_step_is_named(
    runs, tmp_path, capsys
):
    run = _copy(runs, "killed", tmp_path)
    err = _one_line_error(capsys, main(["report", str(run)]))
    assert "incomplete" in err and "--final-step" in err
    with pytest.raises(ValueError, match="incomplete run"):
        estimate_nqm(run, 0)
    assert main(["report", str(run), "--final-step", "3"]) == 0
    written = NQMProblem.load(run / "nqm_problem.npz")
    expected = estimate_nqm(run, 0, final_step=3)
    np.testing.assert_array_equal(written.init_sq, expected.init_sq)
    # the report kept the run incomplete and listed its files (figures inside)
    manifest = verify_folder(run)
    assert manifest["complete"] is False and "nqm_problem.npz" in manifest["files"]
    assert "figures/e1_spectra.png" in manifest["files"]
    # resuming finishes the run; then no final step needs naming
    assert main(["run", "--out", str(run), *RUN_ARGS]) == 0
    assert verify_folder(run)["complete"] is True
    np.testing.assert_array_equal(
        estimate_nqm(run, 0).init_sq, estimate_nqm(run, 0, final_step=6).init_sq
    )


def test_a_second_run_into_a_folder_in_use_is_one_line(runs, tmp_path, capsys):
    run = _copy(runs, "killed", tmp_path)
    with open_run_folder(run, command="someone else", resume=True):
        code = main(["run", "--out", str(run), *RUN_ARGS])
        err = _one_line_error(capsys, code)
        assert "in use by pid" in err and "someone else" in err
        code = main(["report", str(run), "--final-step", "3"])
        assert "in use" in _one_line_error(capsys, code)


def test_bad_options_create_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["run", "--out", str(out), *RUN_ARGS, "--batch-size", "100000"])
    assert "batch_size" in _one_line_error(capsys, code)
    assert not out.exists()
    code = main(["run", "--out", str(out), *RUN_ARGS, "--steps", "-1"])
    _one_line_error(capsys, code)
    assert not out.exists()
