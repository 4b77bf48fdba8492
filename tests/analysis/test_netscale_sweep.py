"""Sweeps: the plan, the durable log, resume after a kill, executors agree."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.netscale.optimizers import OptimizerName, search_space
from analysis.netscale.plan import SweepSpec, plan_sweep, trial_points
from analysis.netscale.records import TrialLog, read_log, record_key
from analysis.netscale.sweep import run_sweep
from analysis.netscale.trial import TIMING_KEYS
from analysis.netscale.workload import WorkloadSpec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

BLOBS = WorkloadSpec(
    model="netscale_workloads:small_mlp", data="netscale_workloads:blobs", target=0.6
)
SWEEP = SweepSpec(
    workload=BLOBS,
    optimizers=(OptimizerName.SGD, OptimizerName.ADAM),
    batch_sizes=(8, 32),
    trials=3,
    max_steps=50,
    eval_every=5,
    seed=1,
    seeds=2,
)


def _strip(records):
    return sorted(
        ({k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records),
        key=record_key,
    )


def _log_records(path):
    records, torn = read_log(path)
    assert not torn
    return _strip(records)


def test_points_are_quasi_random_in_the_space_and_shared_by_batch_sizes():
    pts = trial_points(OptimizerName.ADAM, SWEEP)
    assert len(pts) == 3 and len({p["lr"] for p in pts}) == 3
    for p in pts:
        for param in search_space("adam", ema=False, schedule="constant"):
            assert param.low <= p[param.name] <= param.high
    tasks = plan_sweep(SWEEP)
    tuning = [t for t in tasks if t.key[3] == 0]
    assert len(tuning) == 2 * 2 * 3
    by_point = {(t.key[0], t.key[2]): t.args[0].hparams for t in tuning}
    for t in tuning:  # the same point at every batch size
        assert t.args[0].hparams == by_point[(t.key[0], t.key[2])]
    repeats = [t for t in tasks if t.key[3] > 0]
    assert len(repeats) == 2 * 2 * 2
    assert all(len(t.needs) == 3 for t in repeats)
    other = trial_points(OptimizerName.ADAM, SweepSpec(**{**SWEEP.__dict__, "seed": 2}))
    assert other != pts


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    log = tmp_path_factory.mktemp("sweep") / "trials.jsonl"
    return log, run_sweep(SWEEP, log)


def test_rerun_skips_finished_trials_and_records_repeats(swept):
    log, first = swept
    tuning = [r for r in first if r["repeat"] == 0]
    assert len(tuning) == 12
    reached = {
        (r["optimizer"], r["batch_size"]) for r in tuning if r["status"] == "reached"
    }
    assert reached, "no group reached the target: the test sweep is too short"
    repeats = [r for r in first if r["repeat"] > 0]
    assert len(repeats) == 2 * len(reached)
    assert {(r["optimizer"], r["batch_size"]) for r in repeats} == reached
    # a group with no reaching trial has no repeat to run; re-planned, it trains
    # nothing (run_repeat returns None without training)
    left = plan_sweep(SWEEP, first)
    assert all(t.key[3] > 0 and (t.key[0], t.key[1]) not in reached for t in left)
    again = run_sweep(SWEEP, log)
    assert _strip(again) == _strip(first)
    assert len(read_log(log)[0]) == len(first)
    for r in repeats:
        assert r["curve_steps"][-1] == SWEEP.max_steps  # the whole budget
        best = min(
            (
                x
                for x in tuning
                if (x["optimizer"], x["batch_size"]) == record_key(r)[:2]
            ),
            key=lambda x: (x["steps"] if x["steps"] is not None else 1e9, x["trial"]),
        )
        assert r["hparams"] == best["hparams"] and r["trial"] == best["trial"]


def test_a_log_of_another_sweep_is_refused(tmp_path):
    log = tmp_path / "trials.jsonl"
    run_sweep(SweepSpec(**{**SWEEP.__dict__, "seeds": 0, "batch_sizes": (8,)}), log)
    with pytest.raises(ValueError, match="another sweep"):
        plan_sweep(SweepSpec(**{**SWEEP.__dict__, "seed": 5}), read_log(log)[0])


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    log = tmp_path / "trials.jsonl"
    small = SweepSpec(**{**SWEEP.__dict__, "seeds": 0, "batch_sizes": (8,)})
    full = run_sweep(small, log)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    records, torn = read_log(log)
    assert torn and len(records) == len(full) - 1
    resumed = run_sweep(small, log)
    assert _strip(resumed) == _strip(full)
    assert read_log(log) == (read_log(log)[0], False)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_log(tmp_path / "bad.jsonl")


def test_trial_log_appends_whole_lines(tmp_path):
    log = TrialLog(tmp_path / "t.jsonl")
    log.append({"optimizer": "sgd", "batch_size": 1, "trial": 0, "x": float("inf")})
    text = (tmp_path / "t.jsonl").read_text()
    assert text.endswith("\n") and json.loads(text)["x"] is None  # strict JSON


KILL_CONFIG = """
model = "netscale_workloads:small_mlp"
data = "netscale_workloads:blobs"
target = 0.6
optimizers = ["sgd", "adam"]
batch_sizes = [8, 16]
trials = 4
max_steps = 100
eval_every = 5
seed = 3
n_boot = 5
workers = 1
"""


def _cli(out, config, extra=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    return [
        sys.executable,
        "-m",
        "analysis",
        "net-scaling",
        "--config",
        str(config),
        "--out",
        str(out),
        "--figures",
        str(out / "fig"),
        "--no-figures",
        *extra,
    ], env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_sweep_resumes_to_the_records_of_an_uninterrupted_one(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(KILL_CONFIG)
    killed = tmp_path / "killed"
    cmd, env = _cli(killed, config)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
    log = killed / "trials.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_log(log)[0])
    assert 5 <= n_before < 16
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True, timeout=600)
    whole = tmp_path / "whole"
    cmd2, env2 = _cli(whole, config)
    subprocess.run(cmd2, env=env2, cwd=tmp_path, check=True, timeout=600)
    assert _log_records(log) == _log_records(whole / "trials.jsonl")
    assert len(_log_records(log)) == 16
    assert (killed / "steps.csv").read_text() == (whole / "steps.csv").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_pool_and_ray_give_the_records_of_one_process(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    # the workers (spawned processes, Ray workers) import the test factories
    path = os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    small = SweepSpec(**{**SWEEP.__dict__, "batch_sizes": (8, 16), "seeds": 1})
    one = run_sweep(small, tmp_path / "one.jsonl")
    pool = run_sweep(small, tmp_path / "pool.jsonl", workers=2)
    ray = run_sweep(small, tmp_path / "ray.jsonl", executor="ray", workers=2)
    assert _log_records(tmp_path / "pool.jsonl") == _log_records(tmp_path / "one.jsonl")
    assert _log_records(tmp_path / "ray.jsonl") == _log_records(tmp_path / "one.jsonl")
    assert _strip(pool) == _strip(one) == _strip(ray)
