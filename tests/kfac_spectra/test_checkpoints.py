"""Tests for kfac_spectra.checkpoints: the step store.

Oracles: factors, bases and statistics recomputed independently with
``compute_factors`` / ``kronecker_bases`` / ``eigenbasis_gradient_stats`` (type-2
is deterministic, so the store must round-trip them exactly); the order of the
file system calls (every file durable before any rename, the manifest last).
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from kfac_helpers import randomise
from torch import nn

from kfac_spectra import checkpoints, compute_factors
from kfac_spectra.checkpoints import (
    collect_checkpoint,
    load_checkpoint_arrays,
    step_dir,
)
from kfac_spectra.eigenbasis import kronecker_bases
from kfac_spectra.gradient_stats import eigenbasis_gradient_stats
from kfac_spectra.layer_capture import find_blocks


def test_store_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    randomise(model, 0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    manifest = collect_checkpoint(
        tmp_path, 3, model, x, y, loss="ce", fisher_type="type2", chunk=16
    )
    factors, stats, params = load_checkpoint_arrays(tmp_path, 3)

    ref_factors = compute_factors(model, x, y, "ce", "type2", reduction="mean")
    ref_bases = kronecker_bases(ref_factors, find_blocks(model))
    ref_stats = eigenbasis_gradient_stats(
        model,
        [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])],
        ref_bases,
        loss="ce",
        fisher_type="type2",
    )
    assert set(factors) == set(ref_factors) == {"0", "2"}
    for name, (a, s) in ref_factors.items():
        np.testing.assert_array_equal(factors[name]["A"], a.numpy())
        np.testing.assert_array_equal(factors[name]["S"], s.numpy())
        for field in ("row_values", "row_vectors", "col_values", "col_vectors"):
            np.testing.assert_array_equal(
                factors[name][field], getattr(ref_bases[name], field).numpy()
            )
        for field in ("mean", "second_moment", "variance", "curvature"):
            np.testing.assert_array_equal(
                getattr(stats.layers[name], field),
                getattr(ref_stats.layers[name], field),
            )
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(params[f"param/{name}"], p.detach().numpy())
    weight, bias = model[0].weight.detach(), model[0].bias.detach()
    np.testing.assert_array_equal(
        params["block/0"], torch.cat([weight, bias[:, None]], 1).numpy()
    )
    assert manifest["num_directions"] == 4 * 6 + 3 * 5
    assert manifest["blocks"] == {"0": [4, 6], "2": [3, 5]}
    # no temp files are left behind
    assert not [p for p in step_dir(tmp_path, 3).iterdir() if p.name.startswith(".")]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=gen)
    collect_checkpoint(tmp_path, 0, model, x, y, loss="ce", fisher_type="type2")
    original = (step_dir(tmp_path, 0) / "stats.npz").read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        collect_checkpoint(tmp_path, 0, model, x, y, loss="ce", fisher_type="type2")
    assert (step_dir(tmp_path, 0) / "stats.npz").read_bytes() == original
    assert sorted(p.name for p in step_dir(tmp_path, 0).iterdir()) == [
        "factors.npz",
        "manifest.json",
        "params.npz",
        "stats.npz",
    ]


def _record_io(monkeypatch) -> list[tuple[str, str]]:
    """Log ("fsync", "dir" | "file"), ("replace", name) and ("unlink", name) in
    call order."""
    events: list[tuple[str, str]] = []
    fsync, replace, unlink = os.fsync, os.replace, os.unlink

    def logged_fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        fsync(fd)
        events.append(("fsync", kind))

    def logged_replace(src, dst):
        replace(src, dst)
        events.append(("replace", os.path.basename(dst)))

    def logged_unlink(path, *args, **kwargs):
        unlink(path, *args, **kwargs)
        events.append(("unlink", os.path.basename(path)))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    monkeypatch.setattr(os, "unlink", logged_unlink)
    return events


def test_collection_is_durable_when_its_manifest_is_renamed(tmp_path, monkeypatch):
    """Every file is fsynced before any is renamed into place, the manifest is
    renamed last (after an old one is removed) and the directory is fsynced
    after the renames."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=gen)
    events = _record_io(monkeypatch)
    data = {"factors.npz", "stats.npz", "params.npz"}
    for again in (False, True):
        events.clear()
        collect_checkpoint(tmp_path, 0, model, x, y, loss="ce", fisher_type="type2")
        assert events[:4] == [("fsync", "file")] * 4
        rest = events[4:]
        if again:  # the old manifest goes before anything is renamed
            assert rest[0] == ("unlink", "manifest.json")
            rest = rest[1:]
        assert {name for _, name in rest[:3]} == data
        assert rest[3:] == [("replace", "manifest.json"), ("fsync", "dir")]
        assert sorted(p.name for p in step_dir(tmp_path, 0).iterdir()) == sorted(
            [*data, "manifest.json"]
        )


def test_step_files_clean_up(tmp_path, monkeypatch):
    """Temporary files go on an error (nothing is renamed), and those a killed
    process left are removed by the next writer of the directory."""
    folder = tmp_path / "step"
    folder.mkdir()
    (folder / ".stats.npz.killed.tmp").write_bytes(b"partial")
    (folder / "stats.npz").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="stats failed"):
        with checkpoints.StepFiles(folder) as files:
            assert not (folder / ".stats.npz.killed.tmp").exists()
            files.add("factors.npz", lambda h: h.write(b"new"))
            raise RuntimeError("stats failed")
    assert sorted(p.name for p in folder.iterdir()) == ["stats.npz"]

    fsync = os.fsync

    def failing_fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError("I/O error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        with checkpoints.StepFiles(folder) as files:
            files.add("stats.npz", lambda h: h.write(b"new"))
            files.commit(marker="stats.npz")
    assert sorted(p.name for p in folder.iterdir()) == ["stats.npz"]
    assert (folder / "stats.npz").read_bytes() == b"old"
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ValueError, match="marker"):
        with checkpoints.StepFiles(folder) as files:
            files.add("stats.npz", lambda h: h.write(b"new"))
            files.commit(marker="manifest.json")
    assert (folder / "stats.npz").read_bytes() == b"old"


def test_collect_passes_compute_dtype(tmp_path):
    """float32 conv model: forcing float64 projections changes the arithmetic
    (the arrays differ) but not the statistics beyond float32 rounding."""
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6, 4))
    x = torch.randn(16, 2, 8, generator=gen)
    y = torch.randint(0, 4, (16,), generator=gen)
    kw = dict(loss="ce", fisher_type="type2")
    collect_checkpoint(tmp_path / "f32", 0, model, x, y, **kw)
    collect_checkpoint(tmp_path / "f64", 0, model, x, y, compute_dtype=torch.float64, **kw)  # fmt: skip
    with (
        np.load(step_dir(tmp_path / "f32", 0) / "stats.npz") as a,
        np.load(step_dir(tmp_path / "f64", 0) / "stats.npz") as b,
    ):
        conv = [k for k in a.files if k.startswith("0/")]
        assert conv
        assert any(not np.array_equal(a[k], b[k]) for k in conv)
        for k in (k for k in a.files if not k.startswith("meta/")):
            scale = np.abs(b[k]).max() + 1e-300
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="compute_dtype"):
        collect_checkpoint(tmp_path / "bad", 0, model, x, y, compute_dtype=torch.int32, **kw)  # fmt: skip
