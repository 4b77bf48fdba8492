"""Tests of the configuration resolver (nqm.config).

Oracles: values written by hand into TOML files and read back by the standard
library's :mod:`tomllib`, and the precedence rule defaults < file < overrides
checked field by field.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import types
from pathlib import Path

import pytest

import nqm.config
from nqm.config import coerce_value, config_to_toml, load_toml, resolve_config


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


def _doubled(value):
    return tuple(2 * int(v) for v in str(value).split("+"))


@dataclasses.dataclass(frozen=True)
class Toy:
    n: int = 3
    lr: float = 0.1
    name: str = "toy"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    rates: tuple[float, ...] = (0.5,)
    kl_clip: float | None = 1e-3
    path: str | None = None
    where: Path = Path("out")
    color: Color = Color.RED
    special: tuple[int, ...] = dataclasses.field(
        default=(2,), metadata={"parse": _doubled}
    )

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(tmp_path):
    assert resolve_config(Toy) == Toy()
    path = write(tmp_path, 'n = 5\nlr = 2\nname = "f"\nsizes = [4, 8]\n')
    cfg = resolve_config(Toy, path)
    assert (cfg.n, cfg.lr, cfg.name, cfg.sizes) == (5, 2.0, "f", (4, 8))
    assert type(cfg.lr) is float and cfg.rates == Toy().rates  # untouched
    cfg = resolve_config(Toy, path, {"n": "7", "sizes": None, "lr": None})
    assert (cfg.n, cfg.lr, cfg.sizes) == (7, 2.0, (4, 8))  # None: not given
    base = Toy(name="preset", flag=True)
    cfg = resolve_config(Toy, path, {"rates": "0.1, 0.2"}, base=base)
    assert (cfg.name, cfg.flag, cfg.rates) == ("f", True, (0.1, 0.2))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("n", "12", 12),
        ("n", 4.0, 4),
        ("n", "1e3", 1000),
        ("lr", "0.25", 0.25),
        ("lr", 3, 3.0),
        ("flag", "true", True),
        ("flag", False, False),
        ("sizes", "1, 2,,3", (1, 2, 3)),
        ("sizes", 5, (5,)),
        ("rates", [1, 2.5], (1.0, 2.5)),
        ("kl_clip", "none", None),
        ("kl_clip", "0.5", 0.5),
        ("path", "NONE", None),
        ("where", "a/b", Path("a/b")),
        ("color", "blue", Color.BLUE),
        ("special", "1+2", (2, 4)),
        ("kl-clip", "1e-2", 0.01),
    ],
)
def test_values_are_coerced_to_the_field_type(key, value, expected):
    got = resolve_config(Toy, None, {key: value})
    got = getattr(got, key.replace("-", "_"))
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n", "three", "n must be a number"),
        ("n", 2.5, "n must be an integer"),
        ("n", True, "n must be an integer"),
        ("n", math.inf, "n must be an integer"),
        ("lr", False, "lr must be a number"),
        ("flag", "yes", "flag must be true or false"),
        ("name", 3, "name must be a string"),
        ("sizes", [1, "x"], "sizes must be a number"),
        ("color", "green", "color must be one of red, blue"),
    ],
)
def test_bad_values_name_the_field(key, value, message):
    with pytest.raises(ValueError, match=message):
        coerce_value(Toy, key, value)
    with pytest.raises(ValueError, match=message):
        resolve_config(Toy, None, {key: value})


def test_unknown_keys_name_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "n = 1\nwidth = 2\n")
    with pytest.raises(ValueError, match=r"c\.toml' has unknown key 'width'") as err:
        resolve_config(Toy, path)
    assert "\n" not in str(err.value) and "known keys: color, flag" in str(err.value)
    with pytest.raises(ValueError, match="unknown config key 'nn'"):
        resolve_config(Toy, None, {"nn": 1})
    bad = write(tmp_path, 'lr = "fast"\n', "bad.toml")
    with pytest.raises(ValueError, match=r"bad\.toml': lr must be a number"):
        resolve_config(Toy, bad)


def test_unreadable_files_and_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file"):
        resolve_config(Toy, tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="is not valid TOML"):
        resolve_config(Toy, write(tmp_path, "n = = 1\n"))
    with pytest.raises(ValueError, match="n must be >= 0"):  # the class validates
        resolve_config(Toy, None, {"n": -1})
    with pytest.raises(ValueError, match="dataclass type"):
        resolve_config(dict, None, {})


def test_dashes_and_a_table_section(tmp_path):
    path = write(tmp_path, '[toy]\nkl-clip = 0.2\nname = "t"\n')
    assert resolve_config(Toy, path, table="toy").name == "t"
    assert resolve_config(Toy, path, table="toy").kl_clip == 0.2
    flat = write(tmp_path, "n = 2\n", "flat.toml")  # no [toy]: the top level
    assert resolve_config(Toy, flat, table="toy").n == 2
    assert load_toml(Toy, flat) == {"n": 2}
    cfg = resolve_config(Toy, None, {"special": "3", "path": "p"})
    assert (cfg.special, cfg.path) == ((6,), "p")


@pytest.mark.parametrize(
    "cfg",
    [
        Toy(),
        Toy(
            n=0,
            lr=1 / 3,
            name='a "quoted" \\ name',
            flag=True,
            sizes=(),
            rates=(math.inf, -1e-300),
            kl_clip=None,
            path="x/y",
            where=Path("w"),
            color=Color.BLUE,
        ),  # fmt: skip
    ],
)
def test_toml_round_trips(tmp_path, cfg):
    text = config_to_toml(cfg, header="resolved toy")
    assert text.startswith("# resolved toy\n")
    data = tomllib.loads(text)  # an independent TOML parser reads it
    assert data["kl_clip"] == ("none" if cfg.kl_clip is None else cfg.kl_clip)
    assert ("path" in data) == (cfg.path is not None)  # None is its default
    assert data["rates"] == list(cfg.rates) and data["color"] == cfg.color.value
    special = dataclasses.replace(cfg, special=(2,))  # its parser is not an inverse
    text = config_to_toml(special).replace("special = [2]", 'special = "1"')
    assert resolve_config(Toy, write(tmp_path, text)) == special


def test_from_fields_copies_same_named_fields_and_takes_overrides():
    @dataclasses.dataclass(frozen=True)
    class Narrow:
        a: int
        b: str = "x"

    class Wide:
        a, b, c = 3, "y", 9.0

    assert nqm.config.from_fields(Narrow, Wide()) == Narrow(3, "y")
    assert nqm.config.from_fields(Narrow, Wide(), b="z") == Narrow(3, "z")
    with pytest.raises(AttributeError, match="b"):
        nqm.config.from_fields(Narrow, types.SimpleNamespace(a=1))
