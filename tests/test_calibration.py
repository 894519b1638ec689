"""Judge calibration by prediction-powered inference (eval/calibration.py), on hand-computed inputs and a simulation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.calibration import agreement, calibrate_rows, calibrated_mean

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile

# Labelled rows' labels 1, 0, 1, 0, ... and unlabelled judge scores 1, 0, 1, 0, ...: both have mean 0.5 and
# (population) standard deviation 0.5, so the judge's mean over all rows is its mean over the unlabelled ones.
HUMAN = [1, 0] * 4  # n = 8
UNLABELLED = [1.0, 0.0] * 20  # N = 40


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


def test_a_judge_equal_to_the_humans_is_its_own_estimate_with_a_narrower_interval():
    result = calibrated_mean(UNLABELLED, [float(h) for h in HUMAN], HUMAN)
    assert result["judge_mean"] == result["estimate"] == 0.5
    assert result["judge_error"] == 0.0
    assert (result["n_labelled"], result["n_unlabelled"]) == (8, 40)
    # Judge - human is 0 on every labelled row: the interval is the unlabelled mean's alone, 0.5 -/+ z * 0.5 / sqrt(40).
    assert result["ci95"] == pytest.approx([0.5 - Z95 * 0.5 / math.sqrt(40), 0.5 + Z95 * 0.5 / math.sqrt(40)])
    # The labels alone: 0.5 -/+ z * 0.5 / sqrt(8), over twice as wide.
    assert result["classical"]["mean"] == 0.5
    assert result["classical"]["ci95"] == pytest.approx([0.5 - Z95 * 0.5 / math.sqrt(8), 0.5 + Z95 * 0.5 / math.sqrt(8)])
    assert width(result["ci95"]) < width(result["classical"]["ci95"])


def test_a_judge_biased_by_0_2_has_its_estimate_shifted_by_minus_0_2():
    # PPI does not need scores in [0, 1]: judge = human + 0.2 on every labelled row, and the unlabelled rows are
    # scored with the same bias.
    result = calibrated_mean([u + 0.2 for u in UNLABELLED], [h + 0.2 for h in HUMAN], HUMAN)
    assert result["judge_mean"] == pytest.approx(0.7)
    assert result["judge_error"] == pytest.approx(0.2)
    assert result["estimate"] == pytest.approx(result["judge_mean"] - 0.2)
    assert result["estimate"] == pytest.approx(0.5)
    # A constant error costs no width: the same interval as an unbiased judge's.
    assert result["ci95"] == pytest.approx([0.5 - Z95 * 0.5 / math.sqrt(40), 0.5 + Z95 * 0.5 / math.sqrt(40)])


def test_a_judge_that_disagrees_at_random_widens_the_interval():
    human = [1, 0, 1, 0] * 25  # n = 100
    random_judge = [1.0, 1.0, 0.0, 0.0] * 25  # independent of the labels: right on half the rows
    unlabelled = [1.0, 0.0] * 500  # N = 1000
    agreeing = calibrated_mean(unlabelled, [float(h) for h in human], human)
    random = calibrated_mean(unlabelled, random_judge, human)
    # human - judge is 0, -1, 1, 0, ...: mean 0, variance 0.5. se = sqrt(0.25 / 1000 + 0.5 / 100) = sqrt(0.00525).
    assert random["estimate"] == pytest.approx(0.5)
    assert width(random["ci95"]) == pytest.approx(2 * Z95 * math.sqrt(0.00525))
    assert width(agreeing["ci95"]) == pytest.approx(2 * Z95 * math.sqrt(0.00025))
    assert width(random["ci95"]) > width(agreeing["ci95"])
    # Such a judge costs more than it brings: wider than the labels alone (se 0.5 / sqrt(100) = 0.05).
    assert width(random["ci95"]) > width(random["classical"]["ci95"]) == pytest.approx(2 * Z95 * 0.05)


def test_the_interval_is_not_clipped_to_0_1():
    # estimate = 1 - (0 + 0 + 1) / 3 = 2/3; se = std(0, 0, -1) / sqrt(3) = sqrt(2/9) / sqrt(3): the upper bound is 1.2.
    result = calibrated_mean([1.0] * 5, [1.0, 1.0, 1.0], [1, 1, 0])
    assert result["ci95"][1] == pytest.approx(2 / 3 + Z95 * math.sqrt(2 / 9) / math.sqrt(3))
    assert result["ci95"][1] > 1


def test_the_confidence_level_sets_the_interval():
    result = calibrated_mean(UNLABELLED, [float(h) for h in HUMAN], HUMAN, confidence=0.9)
    z90 = 1.6448536269514722
    assert result["confidence"] == 0.9
    assert width(result["ci95"]) == pytest.approx(2 * z90 * 0.5 / math.sqrt(40))


def test_kappa_and_accuracy_on_a_2x2_table():
    # judge\human   1   0
    #      1        4   1
    #      0        2   3
    # Observed agreement po = (4 + 3) / 10 = 0.7. The judge says 1 on 5/10 rows, the humans on 6/10: chance
    # agreement pe = 0.5 * 0.6 + 0.5 * 0.4 = 0.5. kappa = (po - pe) / (1 - pe) = 0.2 / 0.5 = 0.4.
    judge = [0.9, 0.8, 0.5, 0.7] + [0.6] + [0.1, 0.49] + [0.0, 0.2, 0.3]  # 0.5 is at the threshold: a 1
    human = [1, 1, 1, 1] + [0] + [1, 1] + [0, 0, 0]
    result = agreement(judge, human)
    assert result == {
        "n": 10,
        "accuracy": pytest.approx(0.7),
        "cohen_kappa": pytest.approx(0.4),
        "judge_positive_rate": pytest.approx(0.5),
        "human_positive_rate": pytest.approx(0.6),
    }


def test_the_threshold_binarises_the_judge():
    assert agreement([0.3, 0.7], [1, 0], threshold=0.3)["judge_positive_rate"] == 1.0
    assert agreement([0.3, 0.7], [1, 0], threshold=0.8)["judge_positive_rate"] == 0.0


def test_kappa_is_none_when_both_raters_are_constant_and_equal():
    result = agreement([1.0, 0.9, 0.8], [1, 1, 1])
    assert result["cohen_kappa"] is None
    assert result["accuracy"] == 1.0
    # One constant rater is no better than chance: kappa is 0, not undefined (pe = po = 2/3).
    assert agreement([1.0, 1.0, 1.0], [1, 1, 0])["cohen_kappa"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("judge", "human", "message"),
    [
        ([0.5, 0.5], [1], "differ in length"),
        ([], [], "at least one row"),
        ([0.5, 0.5], [1, 2], "must be 0 or 1"),
        ([0.5, 0.5], [1, 0.5], "must be 0 or 1"),
        ([0.5, math.nan, None], [1, 0, 1], "2 value"),
    ],
)
def test_agreement_rejects_bad_input(judge, human, message):
    with pytest.raises(ValueError, match=message):
        agreement(judge, human)


@pytest.mark.parametrize(
    ("unlabelled", "judge", "human", "message"),
    [
        ([0.5], [0.5, 0.5], [1], "differ in length"),
        ([0.5], [0.5], [1], "at least 2 labelled rows"),
        ([], [0.5, 0.5], [1, 0], "at least 1 unlabelled row"),
        ([0.5, math.nan, math.nan], [0.5, 0.5], [1, 0], "judge_unlabelled: 2 value"),
        ([0.5], [0.5, None], [1, 0], "judge_labelled: 1 value"),
    ],
)
def test_calibrated_mean_rejects_bad_input(unlabelled, judge, human, message):
    with pytest.raises(ValueError, match=message):
        calibrated_mean(unlabelled, judge, human)


def test_calibrated_mean_rejects_a_confidence_outside_0_1():
    with pytest.raises(ValueError, match="confidence"):
        calibrated_mean([0.5], [0.5, 0.5], [1, 0], confidence=95)


def test_calibrate_rows_splits_labelled_and_unlabelled_and_counts_the_excluded():
    rows = [{"id": f"q{i}", "faithfulness": score} for i, score in enumerate([1.0, 0.0, 0.75, None, 0.25, None, 1.0])]
    labels = {"q0": 1, "q1": 0, "q2": 0, "q3": 1, "elsewhere": 1}  # q3 has no judge value; "elsewhere" no row
    result = calibrate_rows(rows, "faithfulness", labels)
    assert result == calibrated_mean([0.25, 1.0], [1.0, 0.0, 0.75], [1, 0, 0]) | {
        "agreement": agreement([1.0, 0.0, 0.75], [1, 0, 0]),
        "excluded": 2,
    }
    assert result["judge_error"] == pytest.approx(0.25)  # (0 + 0 + 0.75) / 3
    assert result["estimate"] == pytest.approx(0.625 - 0.25)
    assert result["agreement"]["accuracy"] == pytest.approx(2 / 3)


def test_calibrate_rows_needs_two_labelled_rows_with_a_value_and_an_unlabelled_one():
    rows = [{"id": "a", "m": 1.0}, {"id": "b", "m": None}, {"id": "c", "m": 0.0}]
    assert calibrate_rows(rows, "m", {"a": 1, "b": 0}) is None  # b's judge failed: one labelled row left
    assert calibrate_rows(rows, "m", {"a": 1, "c": 0}) is None  # every scored row labelled
    assert calibrate_rows(rows + [{"id": "d", "m": 0.5}], "m", {"a": 1, "c": 0}) is not None


def test_the_interval_covers_the_population_mean_of_a_noisy_biased_judge():
    rng = np.random.default_rng(20240601)
    p, n, big_n, repetitions = 0.6, 100, 1000, 300
    covered, estimates, judge_means = 0, [], []
    for _ in range(repetitions):
        truth = (rng.random(n + big_n) < p).astype(int)
        # A lenient judge: it passes 35% of the failing rows and fails 10% of the passing ones, 20% of the labels
        # flipped in all (0.4 * 0.35 + 0.6 * 0.1), and says 1 on 0.6 * 0.9 + 0.4 * 0.35 = 68% of the rows.
        flip = rng.random(n + big_n) < np.where(truth == 1, 0.10, 0.35)
        judge = np.where(flip, 1 - truth, truth).astype(float)
        result = calibrated_mean(judge[n:], judge[:n], truth[:n])
        low, high = result["ci95"]
        covered += low <= p <= high
        estimates.append(result["estimate"])
        judge_means.append(result["judge_mean"])
    assert covered / repetitions >= 0.90
    assert np.mean(judge_means) == pytest.approx(0.68, abs=0.01)  # the judge alone is off by 0.08
    assert np.mean(estimates) == pytest.approx(p, abs=0.01)


def test_importing_keeps_warnings_shown():
    # ppi_py's import calls warnings.simplefilter("ignore"), which would silence every warning in the process.
    code = "import warnings, eval.calibration; warnings.warn('still shown')"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True)
    assert "still shown" in done.stderr


def test_eval_calibrate_corrects_a_stored_runs_judged_metric_by_curators_labels(sqlite_settings, tmp_path):
    import json

    from citeloop.db import session_scope
    from eval.qa import QuestionRow
    from eval.runs import save_run
    from retrieval.ingest import get_or_create_collection
    from tests.test_cli import run_cli

    questions = [QuestionRow(f"q{i}", f"Question {i}?", ["A."]) for i in range(12)]
    judge = [1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, None, 1.0, 0.0]  # q9: the judge failed
    rows = [{"id": q.id, "question": q.question, "answer": "A.", "faithfulness": v} for q, v in zip(questions, judge)]
    with session_scope(sqlite_settings) as session:
        get_or_create_collection(session, "docs")
        run = save_run(session, "docs", "q.jsonl", questions, {"metrics": {"faithfulness": 0.6818}, "rows": rows, "failures": {"faithfulness": 1}}, {}, "cli")
    labels = tmp_path / "labels.jsonl"
    curated = {"q0": 1, "q1": 0, "q2": 0, "q3": 1, "q9": 1}  # the judge called q2 supported; q9 has no judge score
    labels.write_text("".join(json.dumps({"id": q, "faithfulness": v}) + "\n" for q, v in curated.items()))
    out = tmp_path / "calibrated.json"
    done = run_cli("eval", "calibrate", run.id, "--labels", str(labels), "--json", str(out), data_dir=sqlite_settings.data_dir)
    assert done.returncode == 0, done.stderr
    calibrated = json.loads(out.read_text())["calibrated"]["faithfulness"]
    expected = calibrate_rows(rows, "faithfulness", curated)
    assert calibrated["estimate"] == pytest.approx(expected["estimate"]) and calibrated["ci95"] == pytest.approx(expected["ci95"])
    assert calibrated["n_labelled"] == 4 and calibrated["excluded"] == 1 and calibrated["judge_error"] == pytest.approx(0.25)
    assert calibrated["agreement"]["accuracy"] == 0.75

    # Stored with the run, the same labels calibrate it without a file.
    stored = run_cli("eval", "label", run.id, str(labels), data_dir=sqlite_settings.data_dir)
    assert stored.returncode == 0 and f"run {run.id}: labelled faithfulness 5" in stored.stdout, stored.stderr
    again = run_cli("eval", "calibrate", run.id, "--json", str(out), data_dir=sqlite_settings.data_dir)
    assert again.returncode == 0, again.stderr
    assert json.loads(out.read_text())["calibrated"]["faithfulness"]["estimate"] == pytest.approx(expected["estimate"])

    labels.write_text('{"id": "q0", "faithfulness": true}\n')
    boolean = run_cli("eval", "label", run.id, str(labels), data_dir=sqlite_settings.data_dir)
    assert (boolean.returncode, boolean.stderr) == (1, f"error: {labels}:1: 'faithfulness' must be 0 or 1, not True\n")
    labels.write_text('{"id": "q0", "faithfulness": 1}\n{"id": "q1", "faithfulness": 0.5}\n')
    bad = run_cli("eval", "calibrate", run.id, "--labels", str(labels), data_dir=sqlite_settings.data_dir)
    assert (bad.returncode, bad.stderr) == (1, f"error: {labels}:2: 'faithfulness' must be 0 or 1, not 0.5\n")
    labels.write_text('{"id": "q0", "relevance": 1}\n')
    other = run_cli("eval", "calibrate", run.id, "--labels", str(labels), data_dir=sqlite_settings.data_dir)
    assert (other.returncode, other.stderr) == (1, "error: labels of metric(s) the run did not score per question: relevance (it has: faithfulness)\n")


def _judged_run(settings):
    from citeloop.db import session_scope
    from eval.qa import QuestionRow
    from eval.runs import save_run
    from retrieval.ingest import get_or_create_collection

    questions = [QuestionRow(f"q{i}", f"Question {i}?", ["A."]) for i in range(8)]
    rows = [{"id": q.id, "question": q.question, "answer": "A.", "faithfulness": v} for q, v in zip(questions, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0])]
    with session_scope(settings) as session:
        for name in ("docs", "other"):
            get_or_create_collection(session, name)
        return save_run(session, "docs", "q.jsonl", questions, {"metrics": {"faithfulness": 0.625}, "rows": rows, "failures": {"faithfulness": 0}}, {}, "cli")


@pytest.mark.slow
def test_curators_label_a_runs_answers_over_http_and_the_labels_calibrate_it(settings):
    import httpx

    from api.client import CiteloopError, Client
    from citeloop.keys import create_key
    from eval.calibration import calibrate_rows
    from tests.test_api_in_process import served

    run = _judged_run(settings)
    curator = create_key("curator", "curator", ["docs"], settings)
    outsider = create_key("outsider", "curator", ["other"], settings)
    reader = create_key("reader", "reader", ["docs"], settings)
    with served(settings) as (base, _app, _loop):
        def post(key, labels):
            return httpx.post(f"{base}/v1/evals/{run.id}/labels", json={"labels": labels}, headers={"Authorization": f"Bearer {key}"})

        first = post(curator, [{"id": "q0", "metric": "faithfulness", "label": 1}, {"id": "q1", "metric": "faithfulness", "label": 1}])
        assert first.status_code == 200 and first.json() == {"run_id": run.id, "labelled": {"faithfulness": 2}}
        # A later label of the same answer replaces the earlier one; q1's judge score 0 was right after all.
        second = post(curator, [{"id": "q1", "metric": "faithfulness", "label": 0}, {"id": "q2", "metric": "faithfulness", "label": 0}])
        assert second.json()["labelled"] == {"faithfulness": 3}
        # Bad labels are refused whole: nothing of the request is stored.
        unknown = post(curator, [{"id": "q3", "metric": "faithfulness", "label": 1}, {"id": "q99", "metric": "faithfulness", "label": 1}])
        assert unknown.status_code == 400 and "no question 'q99'" in unknown.json()["error"]["message"]
        other_metric = post(curator, [{"id": "q3", "metric": "answer_relevancy", "label": 1}])
        assert other_metric.status_code == 400 and "did not score 'answer_relevancy'" in other_metric.json()["error"]["message"]
        assert post(curator, [{"id": "q3", "metric": "faithfulness", "label": 2}]).status_code == 422
        assert post(curator, [{"id": "q3", "metric": "faithfulness", "label": True}]).status_code == 422
        twice = post(curator, [{"id": "q3", "metric": "faithfulness", "label": 1}, {"id": "q3", "metric": "faithfulness", "label": 0}])
        assert twice.status_code == 422 and "labelled twice" in twice.text
        assert post(reader, [{"id": "q3", "metric": "faithfulness", "label": 1}]).status_code == 403
        hidden = post(outsider, [{"id": "q3", "metric": "faithfulness", "label": 1}])
        assert hidden.status_code == 404 and f"no evaluation run '{run.id}'" in hidden.text

        with Client(base, reader) as client:  # the Python client reads what curators labelled
            assert client.eval_run(run.id)["rows"][2]["faithfulness"] == 1.0
            calibration = client.calibration(run.id)
        with Client(base, curator) as client, pytest.raises(CiteloopError, match="no question 'q99'"):
            client.label_answers(run.id, [{"id": "q99", "metric": "faithfulness", "label": 1}])
    assert calibration["labelled"] == {"faithfulness": 3}
    expected = calibrate_rows(
        [{"id": f"q{i}", "faithfulness": v} for i, v in enumerate([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0])], "faithfulness", {"q0": 1, "q1": 0, "q2": 0}
    )
    got = calibration["calibrated"]["faithfulness"]
    assert got["estimate"] == pytest.approx(expected["estimate"]) and got["n_labelled"] == 3
    assert got["agreement"]["accuracy"] == pytest.approx(2 / 3)  # the judge called q2 supported
