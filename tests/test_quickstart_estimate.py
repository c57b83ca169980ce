"""The quickstart's time estimate: the reference run's stage times, scaled by this machine's pace."""

from __future__ import annotations

import json

from jobs.quickstart.command import STAGES, reference_stage_seconds, remaining_estimate

REFERENCE = {"data": 5.0, "classifier": 70.0, "tokenizer": 300.0, "tokenize": 20.0}


def test_before_any_stage_the_estimate_is_the_reference_run():
    assert remaining_estimate(REFERENCE, {}, list(REFERENCE)) == (395.0, 1.0)


def test_the_estimate_scales_by_the_pace_of_the_stages_run_here():
    seconds, pace = remaining_estimate(
        REFERENCE, {"data": 10.0, "classifier": 140.0}, ["tokenizer", "tokenize"]
    )
    assert pace == 2.0 and seconds == 640.0


def test_no_estimate_without_a_reference_for_every_remaining_stage(tmp_path):
    assert remaining_estimate(REFERENCE, {}, ["train"]) is None
    assert remaining_estimate({}, {}, ["data"]) is None
    assert reference_stage_seconds(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert reference_stage_seconds(tmp_path / "bad.json") == {}


def test_reference_seconds_come_from_the_benchmark_record(tmp_path):
    rows = [{"stage": name, "seconds": float(i + 1)} for i, name in enumerate(STAGES)]
    (tmp_path / "quickstart.json").write_text(json.dumps({"rows": rows}))
    assert reference_stage_seconds(tmp_path / "quickstart.json") == {r["stage"]: r["seconds"] for r in rows}
