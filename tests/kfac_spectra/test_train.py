"""Tests for kfac_spectra.train: the training loop, resuming after a kill,
the saved configuration.

Oracle: an uninterrupted run (a resumed run must reproduce it bit for bit).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from kfac_helpers import tiny_run

from kfac_spectra.train import (
    RESUME_FILE,
    TrainConfig,
    read_manifest,
    resolve_config,
    step_dir,
    train,
)


def _all_arrays(run_dir, steps):
    out = {}
    for step in steps:
        for file in ("factors", "stats", "params"):
            with np.load(step_dir(run_dir, step) / f"{file}.npz") as archive:
                for key in archive.files:
                    out[(step, file, key)] = archive[key]
    return out


class _Kill(RuntimeError):
    pass


@pytest.mark.parametrize("optimizer", ["kfac", "adam"])
def test_resume_after_kill_is_bit_identical(tmp_path, optimizer):
    config = tiny_run(optimizer=optimizer, lr=0.01 if optimizer == "kfac" else 1e-3)
    reference = train(config, tmp_path / "straight")

    def kill(step: int, loss: float) -> None:
        if step == 6:  # after the checkpoint at 4, before the one at 7
            raise _Kill

    with pytest.raises(_Kill):
        train(config, tmp_path / "killed", step_callback=kill)
    assert read_manifest(tmp_path / "killed")["complete"] is False
    before = _all_arrays(tmp_path / "killed", [0, 4])
    seen = []
    resumed = train(
        config, tmp_path / "killed", step_callback=lambda s, _: seen.append(s)
    )
    assert seen[0] == 5  # restarted after the checkpoint at step 4
    assert resumed.collected == reference.collected == (0, 4, 7, 10)
    assert resumed.final_loss == reference.final_loss
    a = _all_arrays(tmp_path / "straight", reference.collected)
    b = _all_arrays(tmp_path / "killed", resumed.collected)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    for key, value in before.items():  # saved factors were not lost or rewritten
        np.testing.assert_array_equal(b[key], value)
    sa = torch.load(tmp_path / "straight" / RESUME_FILE, weights_only=False)
    sb = torch.load(tmp_path / "killed" / RESUME_FILE, weights_only=False)
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name])
    manifest = read_manifest(tmp_path / "killed")
    assert manifest["complete"] is True
    sources = []
    for step in resumed.collected:
        with open(step_dir(tmp_path / "killed", step) / "manifest.json") as handle:
            sources.append(json.load(handle)["factor_source"])
    # K-FAC's own factors once it has any; the measurement batch otherwise
    own = "optimizer" if optimizer == "kfac" else "measure"
    assert sources == ["measure", own, own, own]
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 4, 7, 10]


def test_resume_refuses_another_config(tmp_path):
    train(tiny_run(steps=2, checkpoints=""), tmp_path)
    with pytest.raises(ValueError, match="different config"):
        train(tiny_run(steps=3, checkpoints=""), tmp_path)


def test_config_precedence_and_saved_copy(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[train]\nsteps = 40\nlr = 0.5\ncheckpoints = [0, 10]\nmodel = "mlp"\n'
    )
    config = resolve_config(toml, {"lr": "0.25", "kl-clip": "none"})
    assert config.steps == 40 and config.lr == 0.25 and config.kl_clip is None
    assert config.checkpoints == (0, 10) and config.collect_steps == (0, 10, 40)
    assert config.model == "mlp" and config.damping == TrainConfig().damping
    run = tiny_run(steps=2, checkpoints="1")
    train(run, tmp_path / "run")
    assert resolve_config(tmp_path / "run" / "config.toml") == run
    assert read_manifest(tmp_path / "run")["config"]["steps"] == 2


def test_data_size_for_fixed_size_data(tmp_path):
    with pytest.raises(ValueError, match="data_size"):
        train(tiny_run(data_size=100), tmp_path)
