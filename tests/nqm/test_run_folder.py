"""Tests of nqm.run_folder: one run per output folder, checksummed manifests.

Oracles: hashlib's SHA-256 of the bytes on disk, the directory listing, and the
exit statuses of real (forked) processes that race for, or are killed in, one
folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from nqm import run_folder as rf
from nqm.io import write_atomic

#: Seconds a racing writer holds the folder (long enough to overlap the other).
HOLD_S = 0.6
#: Wall-clock bound on one helper process.
PROC_TIMEOUT_S = 60


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_all(run: rf.RunFolder) -> None:
    run.write_json("config.json", {"a": 1, "b": [1.5, None]})
    run.write_csv("t.csv", [{"x": 1, "y": 2.5}])
    run.write_text("note.txt", "hello\n")
    run.write_bytes("sub/raw.bin", b"\x00\x01\x02")
    run.write_table("rows", [{"k": 1}])
    path = run.file("own.dat")
    path.write_bytes(b"written by other means")
    run.record("own.dat")


def test_manifest_lists_every_file_with_its_checksum(tmp_path):
    with rf.open_run_folder(tmp_path / "out", command="test") as run:
        _write_all(run)
        run.finish({"command": "test", "n": 3})
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    names = {"config.json", "t.csv", "note.txt", "sub/raw.bin", "rows.csv"}
    names |= {"rows.json", "own.dat"}
    assert set(manifest["files"]) == names
    for name, rec in manifest["files"].items():
        assert rec["sha256"] == _sha(out / name)
        assert rec["bytes"] == (out / name).stat().st_size
    assert manifest["complete"] is True and manifest["n"] == 3
    assert rf.verify_folder(out)["n"] == 3
    assert rf.read_verified(out, "sub/raw.bin") == out / "sub" / "raw.bin"
    # the bytes are those of nqm.io's writers
    assert (out / "config.json").read_text() == (
        json.dumps({"a": 1, "b": [1.5, None]}, indent=2) + "\n"
    )
    assert (out / "t.csv").read_text() == "x,y\n1,2.5\n"


def test_reader_refuses_foreign_changed_and_missing_files(tmp_path):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="test") as run:
        _write_all(run)
        run.finish({})
    (out / "stranger.csv").write_text("x\n1\n")
    with pytest.raises(rf.CorruptFileError, match="stranger.csv: not in"):
        rf.read_verified(out, "stranger.csv")
    data = (out / "t.csv").read_bytes()
    (out / "t.csv").write_bytes(data[:-1])  # truncated
    with pytest.raises(rf.CorruptFileError, match=r"t\.csv: its checksum differs"):
        rf.verify_folder(out)
    with pytest.raises(rf.CorruptFileError, match="checksum differs"):
        rf.read_verified(out, "t.csv")
    (out / "t.csv").unlink()
    with pytest.raises(rf.CorruptFileError, match="missing"):
        rf.read_verified(out, "t.csv")
    (out / "manifest.json").write_text('{"files": ')
    with pytest.raises(rf.CorruptFileError, match="unreadable"):
        rf.verify_folder(out)
    (out / "manifest.json").unlink()
    with pytest.raises(rf.CorruptFileError, match="did not finish"):
        rf.read_verified(out, "note.txt")


def test_second_run_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="first-cmd"):
        with pytest.raises(rf.FolderInUseError) as err:
            with rf.open_run_folder(out, command="second"):
                pass  # never reached
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert "first-cmd" in message and "\n" not in message
    with rf.open_run_folder(out, command="third") as run:  # released on exit
        run.finish({})


def test_an_exception_releases_the_lock_and_writes_no_manifest(tmp_path):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="test") as run:
        run.write_text("a.txt", "first")
        run.finish({})
    with pytest.raises(RuntimeError, match="boom"):
        with rf.open_run_folder(out, command="test") as run:
            run.write_text("a.txt", "second")
            raise RuntimeError("boom")
    assert not (out / "manifest.json").exists()
    with rf.open_run_folder(out, command="test"):
        pass


def test_stale_temporaries_are_removed_but_not_another_folders(tmp_path):
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    (out / "nested_run").mkdir()
    stale = [out / ".records.csv.k2j3.tmp", out / "deep" / ".x.png.abc.tmp"]
    for p in stale:
        p.write_text("half")
    (out / "nested_run" / ".lock").write_text("")
    kept = out / "nested_run" / ".y.csv.abc.tmp"
    kept.write_text("another run's write in flight")
    (out / "keep.tmp").write_text("not a temporary of write_atomic")
    with rf.open_run_folder(out, command="test"):
        assert not any(p.exists() for p in stale)
        assert kept.exists() and (out / "keep.tmp").exists()


def test_rewriting_a_listed_file_takes_it_out_of_the_manifest_first(tmp_path):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="test", resume=True) as run:
        run.write_text("a.txt", "one")
        run.checkpoint({"step": 1})
        seen = {}

        def spy(path, writer):
            seen.update(json.loads((out / "manifest.json").read_text()))
            return write_atomic(path, writer)

        import nqm.run_folder as module

        original = module.write_atomic
        module.write_atomic = spy
        try:
            run.write_text("a.txt", "two")
        finally:
            module.write_atomic = original
        assert "a.txt" not in seen["files"] and seen["complete"] is False
        assert seen["pending"]["a.txt"]["previous"]["sha256"] == (
            hashlib.sha256(b"one").hexdigest()
        )
        assert seen["pending"]["a.txt"]["new"]["sha256"] == (
            hashlib.sha256(b"two").hexdigest()
        )
        run.checkpoint({"step": 2})
    assert rf.verify_folder(out)["step"] == 2


@pytest.mark.parametrize("landed", [False, True])
def test_resume_adopts_a_pending_file_in_either_version(tmp_path, landed):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="test", resume=True) as run:
        run.write_text("state.bin", "old")
        run.checkpoint({"step": 1})
    # a kill between taking the file out of the manifest and the atomic rename
    # leaves the old content, or (after the rename) the new
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["state.bin"]
    manifest["pending"] = {
        "state.bin": {
            "new": {"sha256": hashlib.sha256(b"new").hexdigest(), "bytes": 3},
            "previous": {"sha256": hashlib.sha256(b"old").hexdigest(), "bytes": 3},
        }
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    if landed:
        (out / "state.bin").write_text("new")
    with rf.open_run_folder(out, command="test", resume=True) as run:
        assert run.records["state.bin"]["sha256"] == _sha(out / "state.bin")
        assert run.meta == {"step": 1}
    assert "pending" not in rf.verify_folder(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "state.bin").write_text("neither")
    with pytest.raises(rf.CorruptFileError, match="neither its old nor its new"):
        with rf.open_run_folder(out, command="test", resume=True):
            pass


def test_resume_refuses_a_corrupted_file_and_keeps_verified_ones(tmp_path):
    out = tmp_path / "out"
    with rf.open_run_folder(out, command="test", resume=True) as run:
        run.write_text("a.txt", "aaa")
        run.write_text("b.txt", "bbb")
        run.finish({"k": 1})
    with rf.open_run_folder(out, command="test", resume=True) as run:
        assert set(run.records) == {"a.txt", "b.txt"}
        on_disk = json.loads((out / "manifest.json").read_text())
        assert on_disk["complete"] is False  # invalidated until this run finishes
        run.finish(run.meta)
    (out / "b.txt").write_text("bb")
    with pytest.raises(rf.CorruptFileError, match=r"b\.txt: its checksum"):
        with rf.open_run_folder(out, command="test", resume=True):
            pass


def test_bad_arguments(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        with rf.open_run_folder(tmp_path / "file", command="test"):
            pass
    with rf.open_run_folder(tmp_path / "out", command="test") as run:
        for bad in ("../x", "/abs", "manifest.json", ".lock", ""):
            with pytest.raises(ValueError, match="name"):
                run.write_text(bad, "x")
        with pytest.raises(ValueError, match="meta"):
            run.finish({"files": []})


def _writer(out: Path, tag: str, hold: float, go) -> None:
    """A run into ``out`` (exit 2 when the folder is in use, as the CLIs do);
    ``tag == "killed"`` is SIGKILLed after writing, before its manifest."""
    go.wait(PROC_TIMEOUT_S)
    try:
        with rf.open_run_folder(out, command="writer " + tag) as run:
            run.write_text("config.json", tag)
            time.sleep(hold)
            run.write_text("records.csv", tag)
            if tag == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            run.finish({"tag": tag})
    except rf.FolderInUseError as exc:
        (out.parent / f"{tag}.err").write_text(str(exc))
        os._exit(2)
    os._exit(0)


#: fork: the children start at once, with this process's imports
_MP = multiprocessing.get_context("fork")


def _spawn(out: Path, tag: str, go, hold: float = HOLD_S):
    proc = _MP.Process(target=_writer, args=(out, tag, hold, go))
    proc.start()
    return proc


def test_two_processes_racing_into_one_folder(tmp_path):
    out, go = tmp_path / "out", _MP.Event()
    procs = [_spawn(out, tag, go) for tag in ("A", "B")]
    go.set()
    codes = []
    for p in procs:
        p.join(PROC_TIMEOUT_S)
        codes.append(p.exitcode)
    errs = [
        (tmp_path / f"{t}.err").read_text() if (tmp_path / f"{t}.err").exists() else ""
        for t in ("A", "B")
    ]
    assert sorted(codes) in ([0, 2], [0, 0]), errs
    manifest = rf.verify_folder(out)
    # every listed file is the winner's (or the later writer's, serialised)
    for name in manifest["files"]:
        assert (out / name).read_text() == manifest["tag"]
    if sorted(codes) == [0, 2]:
        loser = errs[codes.index(2)].strip()
        assert "is in use by pid" in loser and "writer" in loser
        assert len(loser.splitlines()) == 1


def _run_to_end(proc) -> int:
    proc.join(PROC_TIMEOUT_S)
    return proc.exitcode


def test_a_rerun_killed_midway_leaves_no_manifest_of_foreign_files(tmp_path):
    out, go = tmp_path / "out", _MP.Event()
    go.set()
    assert _run_to_end(_spawn(out, "first", go, hold=0.0)) == 0
    assert rf.verify_folder(out)["tag"] == "first"
    assert _run_to_end(_spawn(out, "killed", go, hold=0.0)) == -signal.SIGKILL
    assert (out / "config.json").read_text() == "killed"
    assert not (out / "manifest.json").exists()  # removed before any write
    with pytest.raises(rf.CorruptFileError):
        rf.read_verified(out, "config.json")
    # the kill released the lock
    assert _run_to_end(_spawn(out, "again", go, hold=0.0)) == 0
    assert rf.verify_folder(out)["tag"] == "again"
