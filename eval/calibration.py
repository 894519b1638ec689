"""An automatic judge's per-row scores (e.g. ragas Faithfulness per answer) calibrated by the rows human curators
labelled: prediction-powered inference (PPI; Angelopoulos et al., Science 2023), as ARES does.

The judge scores every row; the curators label a few rows 0/1. The judge's mean is off by however much the judge
errs; the labels' mean is unbiased but rests on a few rows. PPI takes the judge's mean over the unlabelled rows and
corrects it by the judge's error measured on the labelled ones (N unlabelled rows, n labelled):

    estimate = mean(judge, unlabelled) - mean(judge - human, labelled)
    se       = sqrt(var(judge, unlabelled) / N + var(human - judge, labelled) / n)
    interval = estimate -/+ z(1 - alpha/2) * se          (normal approximation, alpha = 1 - confidence)

with variances over the rows (ddof 0, as ppi_py computes them). The estimate is unbiased for the mean human label
over all rows, and the interval's coverage right as the rows grow many, only when the labelled rows are a uniform
random sample of the rows: rows picked for labelling because they look hard bias both.

`ppi_py` (the PPI authors' package) computes the estimate and the interval, with its power-tuning parameter `lam`
fixed at 1: classical PPI, ARES's estimator. PPI++ (`lam=None`) would estimate from the labelled rows how far to
trust the judge; it is not used because the estimate then is no longer the judge's mean minus its measured error
(`judge_error`), the figure a reader checks, and because that weight is itself noisy on the few rows curators
label. The interval from the labels alone (`classical`) is returned beside PPI's, so a judge that adds more noise
than it removes shows as a wider interval rather than being silently down-weighted. Intervals are returned as
computed, never clipped to [0, 1]: a bound past 0 or 1 is the normal approximation failing on few rows or on a
mean near 0 or 1, which clipping would hide.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

with warnings.catch_warnings():  # ppi_py's import calls warnings.simplefilter("ignore"): the filters are restored
    from ppi_py import classical_mean_ci, ppi_mean_ci, ppi_mean_pointestimate

# Classical PPI: the judge's scores enter with weight 1 (module docstring).
PPI_LAMBDA = 1.0


def _values(values: Sequence[float], name: str) -> np.ndarray:
    """`values` as a 1-D float array; ValueError when any is NaN, infinite or None."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of numbers, got shape {array.shape}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        # A failed judge row is a failure to count, not a value: NaN here would poison every mean silently.
        raise ValueError(f"{name}: {bad} value(s) are NaN, infinite or None; leave such rows out (a row the judge failed on is counted as a failure, never scored)")
    return array


def agreement(judge: Sequence[float], human: Sequence[int], threshold: float = 0.5) -> dict:
    """How the judge's scores, binarised at `threshold` (score >= threshold -> 1), agree with human 0/1 labels of
    the same rows: `{"n", "accuracy", "cohen_kappa", "judge_positive_rate", "human_positive_rate"}`.

    `cohen_kappa` (sklearn's) is None when undefined: both raters gave every row one and the same label, so chance
    agreement is 1 and kappa is 0/0. ValueError when the lengths differ, there are no rows, a judge score is not
    finite, or a label is not 0 or 1.
    """
    scores = _values(judge, "judge")
    labels = _values(human, "human")
    if len(scores) != len(labels):
        raise ValueError(f"judge and human differ in length: {len(scores)} scores, {len(labels)} labels")
    if not len(labels):
        raise ValueError("agreement needs at least one row; got none")
    not_binary = sorted(set(labels[(labels != 0) & (labels != 1)].tolist()))
    if not_binary:
        raise ValueError(f"human labels must be 0 or 1; got {not_binary[:5]}")
    judged = (scores >= threshold).astype(int)
    labels = labels.astype(int)
    undefined = len(set(judged.tolist()) | set(labels.tolist())) == 1
    return {
        "n": len(labels),
        "accuracy": float(np.mean(judged == labels)),
        "cohen_kappa": None if undefined else float(cohen_kappa_score(labels, judged)),
        "judge_positive_rate": float(judged.mean()),
        "human_positive_rate": float(labels.mean()),
    }


def calibrated_mean(
    judge_unlabelled: Sequence[float],
    judge_labelled: Sequence[float],
    human_labelled: Sequence[float],
    confidence: float = 0.95,
) -> dict:
    """The PPI estimate of the mean human label over all rows (module docstring), from the judge's scores of the
    unlabelled rows and the judge's scores and human labels of the labelled ones.

    Returns `{"judge_mean", "estimate", "ci95", "confidence", "n_labelled", "n_unlabelled", "judge_error",
    "classical"}`: `judge_mean` is the judge's mean over all rows, labelled and unlabelled; `ci95` PPI's interval
    `[low, high]` at `confidence` (0.95 unless asked otherwise), unclipped; `judge_error` the judge's mean error
    on the labelled rows, mean(judge - human), which the estimate subtracts; `classical` `{"mean", "ci95"}` from
    the human labels alone, the normal-approximation interval, to show what the judge buys.

    ValueError when judge_labelled and human_labelled differ in length, fewer than 2 rows are labelled, no row is
    unlabelled, a value is not finite (drop failed judge rows and count them as failures instead), or confidence
    is not in (0, 1).
    """
    unlabelled = _values(judge_unlabelled, "judge_unlabelled")
    judge = _values(judge_labelled, "judge_labelled")
    human = _values(human_labelled, "human_labelled")
    if len(judge) != len(human):
        raise ValueError(f"judge_labelled and human_labelled differ in length: {len(judge)} scores, {len(human)} labels")
    if len(human) < 2:
        raise ValueError(f"calibration needs at least 2 labelled rows; got {len(human)}")
    if not len(unlabelled):
        raise ValueError("calibration needs at least 1 unlabelled row: with every row labelled, the labels' mean is the estimate")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    alpha = 1 - confidence
    estimate = ppi_mean_pointestimate(human, judge, unlabelled, lam=PPI_LAMBDA)
    low, high = ppi_mean_ci(human, judge, unlabelled, alpha=alpha, lam=PPI_LAMBDA)
    classical_low, classical_high = classical_mean_ci(human, alpha=alpha)
    return {
        "judge_mean": float(np.concatenate([unlabelled, judge]).mean()),
        "estimate": np.asarray(estimate).item(),
        "ci95": [np.asarray(low).item(), np.asarray(high).item()],
        "confidence": confidence,
        "n_labelled": len(human),
        "n_unlabelled": len(unlabelled),
        "judge_error": float(np.mean(judge - human)),
        "classical": {"mean": float(human.mean()), "ci95": [float(classical_low), float(classical_high)]},
    }


def calibrate_rows(rows: list[dict], metric: str, labels: dict[str, float]) -> dict | None:
    """`calibrated_mean` of the judge's values under `metric` in evaluation rows (each with an "id"), with the human
    0/1 labels `labels` (row id -> label), plus `"agreement"` (`agreement` on the labelled rows, at 0.5) and
    `"excluded"`: the rows whose value is None (the judge failed, or the metric does not apply), left out of both.

    A row is labelled when its id is in `labels`; labels of ids not among the rows are ignored. None when fewer
    than 2 labelled rows have a value, or no row with a value is unlabelled (there is nothing to calibrate then).
    """
    scored = [row for row in rows if row.get(metric) is not None]
    labelled = [row for row in scored if str(row["id"]) in labels]
    unlabelled = [row[metric] for row in scored if str(row["id"]) not in labels]
    if len(labelled) < 2 or not unlabelled:
        return None
    judge = [row[metric] for row in labelled]
    human = [labels[str(row["id"])] for row in labelled]
    return calibrated_mean(unlabelled, judge, human) | {"agreement": agreement(judge, human), "excluded": len(rows) - len(scored)}


def read_labels(path: Path) -> dict[str, dict[str, int]]:
    """Curators' labels of a run's answers, JSONL rows `{"id": question id, metric: 0 | 1, ...}` (e.g.
    `{"id": "q7", "faithfulness": 1}`: the answer to q7 is supported by its contexts): metric -> {id: label}.
    A malformed row is a ValueError naming the file and line."""
    from eval.jsonl import json_lines

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    labels: dict[str, dict[str, int]] = {}
    for lineno, raw in json_lines(path, ValueError):
        if not isinstance(raw, dict) or raw.get("id") is None or len(raw) < 2:
            raise ValueError(f"{path}:{lineno}: expected an object with an 'id' and at least one metric's 0/1 label")
        for metric, label in raw.items():
            if metric == "id":
                continue
            if type(label) is not int or label not in (0, 1):  # not true/false, not 1.0
                raise ValueError(f"{path}:{lineno}: '{metric}' must be 0 or 1, not {label!r}")
            labels.setdefault(metric, {})[str(raw["id"])] = int(label)
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels


def calibrate_run(rows: list[dict], judged: set[str], labels: dict[str, dict[str, int]]) -> dict[str, dict | None]:
    """Each labelled metric of a run's `rows` calibrated (`calibrate_rows`; None where too few rows are labelled);
    `judged`: the metrics the run has a value per row for. A label of another metric is a ValueError."""
    unknown = sorted(set(labels) - judged)
    if unknown:
        raise ValueError(f"labels of metric(s) the run did not score per question: {', '.join(unknown)} (it has: {', '.join(sorted(judged)) or 'none'})")
    return {metric: calibrate_rows(rows, metric, by_id) for metric, by_id in labels.items()}
