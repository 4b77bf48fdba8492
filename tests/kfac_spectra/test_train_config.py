"""Tests for kfac_spectra.train_config: validation and the TOML/override layers."""

from __future__ import annotations

import dataclasses

import pytest

from kfac_spectra.train_config import TrainConfig, resolve_config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"nonsense": 1}, "nonsense"),
        ({"steps": "many"}, "steps"),
        ({"steps": 0}, "steps"),
        ({"checkpoints": "0,500"}, "checkpoints"),
        ({"model": "vgg"}, "model"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"measure_fisher": "exact"}, "measure_fisher"),
        ({"lr": -1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"device": "tpu"}, "device"),
        ({"steps": None}, "steps"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(None, overrides)


def test_bad_config_file(tmp_path):
    with pytest.raises(ValueError, match="config"):
        resolve_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ValueError, match="config"):
        resolve_config(bad)


def test_frozen_defaults():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]
    assert config.collect_steps[-1] == config.steps
