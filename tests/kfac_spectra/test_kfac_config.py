"""KFACConfig: the keyword and the config forms of KFAC's options agree, the
options are validated once with one-line errors naming them, and a config is
frozen."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from kfac_helpers import randomise, seeded
from torch import nn

from kfac_spectra import KFAC, KFACConfig
from kfac_spectra.kfac import FisherType, LossType, StepRule

DT = torch.float64
STEPS = 4


def _model(seed: int) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return randomise(model, seed, scale=0.6)


def _trained(make_opt) -> list[torch.Tensor]:
    gen = seeded(1)
    x = torch.randn(12, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (12,), generator=gen)
    model = _model(0)
    opt = make_opt(model)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_config_and_keywords_train_identically() -> None:
    kw = dict(lr=0.2, damping=1e-2, inverse_interval=2, seed=3, momentum=0.5)
    by_keywords = _trained(lambda m: KFAC(m, "ce", **kw))
    by_config = _trained(lambda m: KFAC(m, config=KFACConfig(loss="ce", **kw)))
    for a, b in zip(by_keywords, by_config, strict=True):
        assert torch.equal(a, b)


def test_keywords_override_the_config() -> None:
    base = KFACConfig(loss="mse", lr=0.3, seed=5)
    opt = KFAC(_model(2), config=base, lr=0.05)
    assert opt.config == dataclasses.replace(base, lr=0.05)
    assert opt.param_groups[0]["lr"] == 0.05
    assert opt.loss is LossType.MSE
    assert KFAC(_model(2), "ce", config=base).loss is LossType.CE


def test_strings_become_enums_and_configs_compare_by_value() -> None:
    cfg = KFACConfig(fisher_type="type2", step_rule="qmodel", skip_modules=["0"])
    assert cfg.fisher_type is FisherType.TYPE2
    assert cfg.step_rule is StepRule.QMODEL
    assert cfg.skip_modules == ("0",)
    assert cfg == KFACConfig(
        fisher_type=FisherType.TYPE2, step_rule=StepRule.QMODEL, skip_modules=("0",)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"stats_batch_size": 0}, "stats_batch_size"),
        ({"stats_batch_size": True}, "stats_batch_size"),
        ({"lm_interval": 0}, "lm_interval"),
        ({"min_damping": 1.0}, "min_damping"),
        ({"max_damping": 1e-4}, "max_damping"),
        ({"cg_max_iter": 0}, "cg_max_iter"),
        ({"cg_rtol": 0.0}, "cg_rtol"),
        ({"lr": float("inf")}, "lr"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_invalid_options_raise_one_line_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}=") as info:
        KFACConfig(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=f"^{name}="):
        KFAC(_model(3), **kwargs)


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="'learning_rate'"):
        KFAC(_model(4), learning_rate=0.1)
