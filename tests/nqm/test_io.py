"""Tests of the atomic I/O layer (nqm.io): text, JSON, CSV tables and figures.

Oracles: the standard library's csv and json readers, the PNG and PDF magic
bytes, and the directory listing after a simulated crash.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from nqm import io as nio


def test_tables_round_trip(tmp_path):
    rows = [
        {"a": 1, "b": math.inf, "c": [1, 2]},
        {"a": 2, "b": 0.5, "c": None},
    ]
    csv_path, json_path = nio.write_table(tmp_path, "t", rows)
    with open(csv_path) as f:
        back = list(csv.DictReader(f))
    assert back[0] == {"a": "1", "b": "inf", "c": "1;2"}
    assert float(back[1]["b"]) == 0.5 and back[1]["c"] == ""
    assert json.loads(json_path.read_text()) == [
        {"a": 1, "b": None, "c": [1, 2]},
        {"a": 2, "b": 0.5, "c": None},
    ]


def test_csv_columns_order_and_sequence_rows(tmp_path):
    rows = [{"b": 0.1, "a": 1}, {"c": -math.inf, "a": 2}]
    path = nio.write_csv(tmp_path / "m.csv", rows, columns=["a", "b"])
    assert path.read_text() == "a,b\n1,0.1\n2,\n"  # c is not a column
    nio.write_csv(tmp_path / "f.csv", rows)  # first-seen order
    assert (tmp_path / "f.csv").read_text() == "b,a,c\n0.1,1,\n,2,-inf\n"
    nio.write_csv(tmp_path / "s.csv", [(1, 1 / 3), (2, None)], ["x", "y"])
    with open(tmp_path / "s.csv") as f:
        back = list(csv.reader(f))
    assert back == [["x", "y"], ["1", repr(1 / 3)], ["2", ""]]
    assert float(back[1][1]) == 1 / 3  # repr round-trips exactly


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([(1, 2)], None, "columns: required"),
        ([(1, 2, 3)], ["x", "y"], "3 cells for 2 columns"),
        ([{"x": 1}, (1,)], ["x"], "all mappings or all sequences"),
    ],
)
def test_csv_rejects_bad_rows_before_writing(tmp_path, rows, columns, message):
    with pytest.raises(ValueError, match=message):
        nio.write_csv(tmp_path / "bad.csv", rows, columns)
    assert os.listdir(tmp_path) == []


def test_json_is_strict_and_converts_numpy_and_paths(tmp_path):
    obj = {
        "x": np.float64(0.5),
        "v": np.arange(3),
        "t": (1, math.nan),
        "p": tmp_path,
        3: math.inf,
    }
    path = nio.write_json(tmp_path / "o.json", obj)
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "x": 0.5,
        "v": [0, 1, 2],
        "t": [1, None],
        "p": str(tmp_path),
        "3": None,
    }


def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path):
    dest = tmp_path / "records.csv"
    dest.write_text("old complete content\n")

    def half_then_crash(f):
        f.write(b"family,steps\nsgd,")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        nio.write_atomic(dest, half_then_crash)
    assert dest.read_text() == "old complete content\n"
    assert os.listdir(tmp_path) == ["records.csv"]


def test_crash_before_rename_leaves_no_file(tmp_path, monkeypatch):
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated power cut")
        return os.rename(src, dst)

    monkeypatch.setattr(nio.os, "replace", crash_on_second)
    rows = [{"family": "sgd", "steps": 3}]
    with pytest.raises(OSError, match="power cut"):
        nio.write_table(tmp_path, "records", rows)
    # the CSV went through completely; the JSON never appeared, nor any temp file
    assert sorted(os.listdir(tmp_path)) == ["records.csv"]
    assert (tmp_path / "records.csv").read_text() == "family,steps\nsgd,3\n"


def test_text_needs_an_existing_directory(tmp_path):
    out = nio.write_text_atomic(tmp_path / "r.md", "# title\n")
    assert out.read_text() == "# title\n"
    with pytest.raises(FileNotFoundError, match="path"):
        nio.write_text_atomic(tmp_path / "missing" / "r.md", "x")


def test_save_figure_writes_png_and_pdf(tmp_path):
    from matplotlib.figure import Figure  # no pyplot: no display needed

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    paths = nio.save_figure(fig, tmp_path / "fig.v2")  # a dot in the stem stays
    assert [p.name for p in paths] == ["fig.v2.png", "fig.v2.pdf"]
    assert (tmp_path / "fig.v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig.v2.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(os.listdir(tmp_path)) == ["fig.v2.pdf", "fig.v2.png"]


def test_numpy_scalars_are_written_as_plain_numbers(tmp_path):
    # numpy 2's repr of a float64 is "np.float64(1.5)": the cell must hold "1.5"
    path = tmp_path / "t.csv"
    nio.write_csv(
        path, [{"a": np.float64(1.5), "b": np.int64(3), "c": np.float32(0.25)}]
    )
    assert path.read_text().splitlines() == ["a,b,c", "1.5,3,0.25"]


def test_read_npz_round_trip_and_one_line_errors(tmp_path):
    """Each kind of bad file is named for what it is; no message suggests
    loading pickled data."""
    import zipfile

    good = tmp_path / "good.npz"
    arrays = {"h": np.arange(3.0), "c": np.ones((2, 2))}
    np.savez(good, **arrays)
    back = nio.read_npz(good)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    text = tmp_path / "text.npz"
    text.write_text("h,c\n1,2\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:60])
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, h=np.array([{"a": 1}], dtype=object))
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with zipfile.ZipFile(tmp_path / "bad_member.npz", "w") as z:
        z.writestr("h.npy", b"\x93NUMPY garbage header")
    cases = [
        (text, "is not an .npz archive"),
        (empty, "is not an .npz archive"),
        (truncated, "truncated or corrupted"),
        (tmp_path / "bad_member.npz", "corrupted .npz archive"),
        (pickled, "object (pickled) arrays, which are never loaded"),
        (folder, "is a directory"),
        (tmp_path / "none.npz", "does not exist"),
    ]
    for path, needle in cases:
        with pytest.raises(ValueError) as info:
            nio.read_npz(path, "spectrum file")
        message = str(info.value)
        assert message.startswith(f"spectrum file {str(path)!r}"), message
        assert needle in message, message
        assert "allow_pickle" not in message and "\n" not in message, message
