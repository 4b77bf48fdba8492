"""The Shallue et al. (2018) archive reader, on small files written in its format."""

import json

import pytest

from analysis.netscale.archive import read_study, read_workload
from analysis.netscale.results import critical_batch_table, steps_table

METRIC = "train/cross_entropy_error"
PARAMS = {
    "learning_rate": {
        "max_value": 10.0,
        "min_value": 0.0001,
        "scale": "LOG_SCALE",
        "type": "DOUBLE",
    },
    "momentum": {
        "max_value": 0.9999,
        "min_value": 0.9,
        "scale": "REVERSE_LOG_SCALE",
        "type": "DOUBLE",
    },
}


def _write_trial(study, trial_id, status, rows, lr):
    d = study / str(trial_id)
    d.mkdir()
    meta = {
        "_internal_study_name": "x",
        "_internal_trial_id": trial_id + 100,
        "parameters": {"learning_rate": lr, "momentum": 0.95},
        "status": status,
        "steps": rows[-1][0],
        "trial_id": trial_id,
    }
    (d / "metadata.json").write_text(json.dumps(meta, indent=2))
    lines = ["step," + METRIC + ",train/classification_error"]
    # rows out of step order: the reader sorts by step
    for step, value in reversed(rows):
        lines.append(f"{step},{value},0.5")
    (d / "measurements.csv").write_text("\n".join(lines) + "\n")


def _write_workload(root, scale):
    """Studies at B = 8, 16, 32, 64; the best trial reaches 1.0 at S(B) steps."""
    for k, b in enumerate((8, 16, 32, 64)):
        study = root / str(k)
        study.mkdir(parents=True)
        (study / "study.json").write_text(
            json.dumps(
                {
                    "batch_size": b,
                    "dataset": "mnist",
                    "early_stopping": False,
                    "model": "simple_cnn_base",
                    "optimizer": "nesterov_momentum",
                    "parameter_configs": PARAMS,
                    "train_steps": 10000,
                }
            )
        )
        s = scale(b)
        _write_trial(study, 0, "COMPLETE", [(0, 2.3), (s - 100, 1.2), (s, 0.9)], 0.1)
        _write_trial(study, 1, "COMPLETE", [(0, 2.3), (s, 1.5), (2 * s, 0.8)], 0.01)
        _write_trial(study, 2, "INFEASIBLE", [(0, 2.3), (50, "nan")], 10.0)
        _write_trial(study, 3, "INCOMPLETE", [(0, 2.3), (10, 0.1)], 1.0)


def test_reads_studies_into_records(tmp_path):
    _write_workload(tmp_path, lambda b: int(200 * (1 + 32 / b)))
    studies, records = read_workload(tmp_path, metric=METRIC, target=1.0)
    assert [s["batch_size"] for s in studies] == [8, 16, 32, 64]
    assert studies[0]["parameter_configs"] == PARAMS
    assert len(records) == 4 * 3  # INCOMPLETE left out
    by_id = {(r["batch_size"], r["trial"]): r for r in records}
    s8 = int(200 * (1 + 32 / 8))
    r0 = by_id[(8, 0)]
    assert r0["status"] == "reached" and r0["steps"] == s8
    assert r0["curve_steps"] == [0, s8 - 100, s8]
    assert r0["curve"] == [2.3, 1.2, 0.9]
    assert r0["hparams"] == {"learning_rate": 0.1, "momentum": 0.95}
    assert by_id[(8, 1)]["steps"] == 2 * s8
    bad = by_id[(8, 2)]
    assert bad["status"] == "diverged" and bad["steps"] is None
    assert bad["curve"] == [2.3, None]
    rows = steps_table(records)
    assert [r["steps"] for r in rows] == [
        int(200 * (1 + 32 / b)) for b in (8, 16, 32, 64)
    ]
    assert all(r["feasible"] == 2 and r["trials"] == 3 for r in rows)
    # a higher threshold from the same curves: 1.2 is met by trial 0 at s - 100
    assert steps_table(records, 1.2)[0]["steps"] == s8 - 100
    (crit,) = critical_batch_table(records, n_boot=10)
    assert crit["b_crit"] == pytest.approx(32, rel=0.05)


def test_incomplete_trials_on_request(tmp_path):
    _write_workload(tmp_path, lambda b: 1000)
    _, recs = read_study(
        tmp_path / "0", metric=METRIC, target=1.0, include_incomplete=True
    )
    inc = [r for r in recs if r["archive_status"] == "INCOMPLETE"]
    assert len(inc) == 1 and inc[0]["steps"] == 10


def test_malformed_archives(tmp_path):
    _write_workload(tmp_path, lambda b: 1000)
    with pytest.raises(ValueError, match="no column"):
        read_workload(tmp_path, metric="val/accuracy", target=1.0)
    (tmp_path / "0" / "1" / "metadata.json").unlink()
    with pytest.raises(ValueError, match="missing"):
        read_workload(tmp_path, metric=METRIC, target=1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no study"):
        read_workload(empty, metric=METRIC, target=1.0)


def test_cli_analyses_an_archive_workload(tmp_path):
    from analysis.__main__ import main

    _write_workload(tmp_path / "w", lambda b: int(200 * (1 + 32 / b)))
    out = tmp_path / "out"
    code = main(
        [
            "net-scaling",
            "--archive",
            str(tmp_path / "w"),
            "--target",
            "1.0",
            "--n-boot",
            "5",
            "--out",
            str(out),
            "--figures",
            str(tmp_path / "fig"),
        ]
    )
    assert code == 0
    assert (out / "trials.jsonl").read_text().count("\n") == 12
    text = (out / "steps.csv").read_text()
    assert "nesterov_momentum,8,1000" in text
    assert (tmp_path / "fig" / "steps_vs_batch.png").exists()
