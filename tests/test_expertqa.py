"""ExpertQA as real human preferences: the reader (answers, revisions, the cited evidence passages), ratings for
the reward model, preference pairs over the serving prompt of the cited passages, and `eval dpo` end to end
(a real reward model, DPO of a SmolLM2 adapter, llama.cpp serving it) on a small made-up split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eval.expertqa import answer_messages, preference_pairs, ratings, read_expertqa, read_judged_claims, split_questions, win_rate
from tests.conftest import REPO


def row(question, original, revised, usefulness="Useful", evidence=()):
    claims = [{"claim_string": original, "evidence": list(evidence)}]
    answer = {"answer_string": original, "revised_answer_string": revised, "usefulness": usefulness, "claims": claims}
    return json.dumps({"question": question, "answers": {"gpt4": answer}})


def test_expertqa_revisions_rate_answers_and_bad_files_are_named(tmp_path):
    (tmp_path / "rand_val.jsonl").write_text(
        row("What is a guild?", "A guild is an association [1].", "A guild is an\nassociation [1].")  # only re-wrapped
        + "\n" + row("What is a bond?", "A bond is a stock [2].", "A bond is a loan [2].", "Partially useful") + "\n"
    )
    (tmp_path / "domain_val.jsonl").write_text(row("What is a bond?", "A bond is a stock [2].", "A bond is a loan [2].") + "\n")
    answers = read_expertqa(tmp_path)
    assert len(answers) == 2  # the splits overlap: one answer per (question, system)
    assert {(r.query, r.answer, r.label) for r in ratings(answers)} == {
        ("What is a guild?", "A guild is an association [1].", 1),
        ("What is a bond?", "A bond is a loan [2].", 1),
        ("What is a bond?", "A bond is a stock [2].", 0),
    }
    (tmp_path / "domain_val.jsonl").write_text(row("Q?", "a", "b") + "\n" + '{"question": "no answers"}\n')
    with pytest.raises(ValueError, match=r"domain_val.jsonl:2: not an ExpertQA row \(KeyError"):
        read_expertqa(tmp_path)
    with pytest.raises(ValueError, match="rand_val.jsonl: no such file"):
        read_expertqa(tmp_path / "missing")
    with pytest.raises(ValueError, match="both need some"):  # one question is on one side of any split
        split_questions(answers[:1], 0.5)


def test_pairs_prompt_the_cited_passages_numbered_as_the_answer_cites_them(tmp_path):
    evidence = [
        "[2] https://example.org/bonds\n\nBonds and loans. A bond is a loan to an issuer. It pays a coupon.",
        "[1] https://example.org/url-only",  # no passage: not a source
        "[2] https://example.org/bonds\n\nanother passage under the same number is not a second source",
    ]
    (tmp_path / "rand_val.jsonl").write_text(row("What is a bond?", "A bond is a stock [2].", "A bond is a loan [2].", evidence=evidence) + "\n")
    (tmp_path / "domain_val.jsonl").write_text(row("What is a guild?", "A guild is a club.", "A guild is a club.") + "\n")
    bond, guild = read_expertqa(tmp_path)
    assert [(e.n, e.url) for e in bond.evidence] == [(2, "https://example.org/bonds")] and guild.evidence == ()

    closest = lambda question, sources, keep: {s.n: [(s.text.index("A bond"), s.text.index(" It pays"))] for s in sources}  # noqa: E731
    messages = answer_messages(bond, closest, evidence_sentences=1)
    assert "[2] A bond is a loan to an issuer." in messages[1]["content"] and "coupon" not in messages[1]["content"]
    assert messages[1]["content"].endswith("Question: What is a bond?")
    assert "coupon" in answer_messages(bond, closest, evidence_sentences=0)[1]["content"]  # the whole passage

    pairs = preference_pairs([bond, guild], lambda a: answer_messages(a, closest, 1))
    assert [(p.chosen, p.rejected, p.messages) for p in pairs] == [("A bond is a loan [2].", "A bond is a stock [2].", messages)]


def test_win_rate_counts_ties_as_half_a_win():
    report = win_rate([0.9, 0.2, 0.5, 0.7], [0.1, 0.3, 0.5, 0.6])
    assert (report["wins"], report["ties"], report["losses"]) == (2, 1, 1)
    assert report["rate"] == 0.625 and report["ci95"][0] <= 0.625 <= report["ci95"][1]


@pytest.mark.slow
def test_eval_dpo_trains_on_the_training_questions_and_answers_the_held_out_ones(tmp_path):
    data = tmp_path / "expertqa"
    data.mkdir()
    rows = []
    for i in range(12):
        evidence = [f"[1] https://example.org/{i}\n\nRelease {i} of the parser reads configuration files in TOML. It was published in spring."]
        rows.append(row(f"Which files does release {i} read?", f"Release {i} reads YAML [1].", f"Release {i} reads configuration files in TOML [1].", evidence=evidence))
    (data / "rand_val.jsonl").write_text("\n".join(rows[:6]) + "\n")
    (data / "domain_val.jsonl").write_text("\n".join(rows[6:]) + "\n")
    train, held = split_questions(read_expertqa(data), 0.3)
    out = tmp_path / "report.json"
    env = dict(os.environ, CITELOOP_DATA_DIR=str(tmp_path / "var"))
    done = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "dpo", "--expertqa", str(data), "--holdout", "0.3", "--limit", "2",
         "--max-new-tokens", "8", "--epochs", "1", "--learning-rate", "0.002", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    answered = min(2, len(held))
    assert report["train_pairs"] == len(train) and report["questions"] == {"train": len(train), "held_out": len(held), "answered": answered}
    assert report["dpo"]["pairs"] == len(train) and report["dpo"]["steps"] >= 1 and report["reward"]["train_ratings"] == 2 * len(train)
    for key in ("win_rate_by_reward", "win_rate_by_f1"):
        outcome = report[key]
        assert outcome["wins"] + outcome["ties"] + outcome["losses"] == answered and 0 <= outcome["rate"] <= 1
    assert f"{answered} of {len(held)} held-out questions answered; reward model prefers the revision" in " ".join(done.stdout.split())
    assert report["reward"]["held_out_pairs"] == len(held)  # scored on every held-out answer, not only those answered
    assert len(report["examples"]) == answered and all(e["base"] and e["dpo"] for e in report["examples"])


def test_judged_claims_carry_the_experts_support_label_and_their_passages(tmp_path):
    def claim(text, support, evidence):
        return {"claim_string": text, "support": support, "evidence": evidence}

    passage = "[1] https://example.org/a\n\nBonds are loans to an issuer."
    claims = [
        claim("Bonds are loans [1].", "Complete", [passage]),
        claim("Bonds never default [1].", "Incomplete", [passage]),
        claim("Bonds are old [1].", "Partial", [passage]),
        claim("Bonds are sold at banks [2].", "Complete", ["[2] https://example.org/url-only"]),  # no passage to judge by
        claim("Bonds are fun [1].", "N/A", [passage]),
    ]
    answer = {"answer_string": "x", "revised_answer_string": "x", "usefulness": "Useful", "claims": claims}
    line = json.dumps({"question": "What is a bond?", "answers": {"gpt4": answer, "bing_chat": answer}})
    (tmp_path / "rand_val.jsonl").write_text(line + "\n")
    (tmp_path / "domain_val.jsonl").write_text(line + "\n")
    judged = read_judged_claims(tmp_path)
    assert [(c.claim, c.supported) for c in judged] == [("Bonds are loans.", 1), ("Bonds never default.", 0), ("Bonds are old.", 0)]
    assert judged[0].passages == ("Bonds are loans to an issuer.",)


def test_judge_agreement_counts_agreement_and_how_often_the_calibrated_interval_holds_the_experts_rate():
    import random

    from eval.expertqa import judge_agreement

    rng = random.Random(3)
    experts = [int(rng.random() < 0.7) for _ in range(300)]
    # A judge that agrees with the experts on 85% of the claims and fails on every 30th.
    rows = [
        {"id": str(i), "expert": e, "faithfulness": None if i % 30 == 0 else float(e if rng.random() < 0.85 else 1 - e)}
        for i, e in enumerate(experts)
    ]
    report = judge_agreement(rows, 0.2, 400, seed=0)
    scored = [r for r in rows if r["faithfulness"] is not None]
    assert report["scored"] == len(scored) == 290 and report["expert_support_rate"] == round(sum(r["expert"] for r in scored) / 290, 4)
    assert report["agreement"]["accuracy"] == sum(r["faithfulness"] == r["expert"] for r in scored) / 290
    coverage = report["coverage"]
    assert coverage["labelled"] == 58 and coverage["unlabelled"] == 232 and 0.9 <= coverage["ppi"] <= 0.99
    # The judge narrows the interval the labels alone give.
    assert coverage["mean_width_ppi"] < coverage["mean_width_classical"]
    assert report["calibrated"]["n_labelled"] == 58
    with pytest.raises(ValueError, match="too few to measure agreement"):
        judge_agreement([{"id": "1", "expert": 1, "faithfulness": None}] * 5, 0.2, 10, seed=0)


def test_eval_judge_analyses_stored_scores_again_and_names_a_bad_file(tmp_path):
    from tests.test_cli import run_cli

    rows = [{"id": str(i), "question": "Q?", "answer": "A.", "expert": i % 3 != 0, "faithfulness": float(i % 3 != 0 or i % 5 == 0)} for i in range(60)]
    stored = tmp_path / "judged.json"
    stored.write_text(json.dumps({"claims": 60, "failures": 0, "judge_seconds": 1.0, "rows": rows}))
    out = tmp_path / "again.json"
    done = run_cli("eval", "judge", "--expertqa", str(tmp_path), "--scores", str(stored), "--labelled", "0.5", "--repeats", "50", "--json", str(out), data_dir=tmp_path / "var")
    assert done.returncode == 0, done.stderr
    again = json.loads(out.read_text())
    assert again["coverage"]["labelled"] == 30 and again["coverage"]["repeats"] == 50 and again["rows"] == rows
    stored.write_text('{"claims": 3}')
    bad = run_cli("eval", "judge", "--expertqa", str(tmp_path), "--scores", str(stored), data_dir=tmp_path / "var")
    assert bad.returncode == 1 and bad.stderr.startswith(f"error: {stored}: not a report of eval judge (KeyError")
