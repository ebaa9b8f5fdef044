"""Two evaluations paired question by question: the sign test and the interval, against what they must give."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gsm8k_tr.infer.compare import compare, scores, sign_test


@pytest.mark.parametrize("gained, lost, expected", [
    (0, 0, 1.0),            # nothing changed: no evidence either way
    (5, 0, 2 / 32),         # all five one way: 2 x (1/2)^5
    (0, 5, 2 / 32),         # the test is two-sided
    (6, 6, 1.0),            # an even split
    (9, 1, 2 * 11 / 1024),  # 2 x P(X <= 1), X ~ Bin(10, 1/2) = 2 x (1 + 10) / 1024
    # the demo's GRPO on two machines (docs/benchmarks.md: 0.02 and 0.10); R's binom.test(42, 65) and
    # binom.test(45, 75) give the same, being symmetric at one half
    (42, 23, 0.024812),
    (45, 30, 0.105342),
])
def test_sign_test_is_the_exact_binomial_tail(gained: int, lost: int, expected: float) -> None:
    assert math.isclose(sign_test(gained, lost), expected, abs_tol=5e-6)


def test_a_large_count_neither_overflows_nor_loses_precision() -> None:
    # 10,000 questions changed, split 5,100 / 4,900: the normal approximation with continuity correction,
    # z = (200 - 1) / sqrt(10,000) = 1.99, gives p = 0.0466
    assert math.isclose(sign_test(5100, 4900), 0.0466, abs_tol=5e-4)


def test_questions_are_paired_by_text_and_gold_and_samples_give_shares() -> None:
    before = [{"question": "a", "gold": "1", "correct": False}, {"question": "b", "gold": "2", "correct": True},
              {"question": "c", "gold": "3", "correct": True}]
    # with three samples a question, its score is the share right
    after = [{"question": q, "gold": g, "correct": True,
              "samples": [{"correct": c} for c in flags]}
             for q, g, flags in (("a", "1", (True, True, False)), ("b", "2", (True, False, False)),
                                 ("e", "9", (True, True, True)))]  # "e" was not asked before: left out
    paired = compare("sft", scores(before), "grpo", scores(after))
    assert paired.questions == 2 and paired.gained == 1 and paired.lost == 1
    assert math.isclose(paired.change, ((2 / 3 - 0) + (1 / 3 - 1)) / 2)
    assert paired.change_low < paired.change < paired.change_high
    assert compare("sft", scores(before), "grpo", {("z", "0"): 1.0}) is None


def test_a_question_asked_twice_is_paired_twice_in_order() -> None:
    # A data set may ask the same question twice (a translation that made two rows alike): each answer is its own,
    # not one that the later replaces, so both count and neither is dropped without a word.
    before = [{"question": "a", "gold": "1", "correct": c} for c in (False, True)]
    after = [{"question": "a", "gold": "1", "correct": c} for c in (True, True)]
    paired = compare("sft", scores(before), "grpo", scores(after))
    assert (paired.questions, paired.gained, paired.lost) == (2, 1, 0)
    assert (paired.only_before, paired.only_after) == (0, 0)
    once_more = compare("sft", scores(before), "grpo", scores(after + after[:1]))  # the later asked it a third time
    assert (once_more.questions, once_more.only_after) == (2, 1)


def test_the_interval_is_the_paired_normal_one() -> None:
    # 100 questions: 20 better, 10 worse, 70 unchanged. Mean change 0.1; per-question differences' standard
    # deviation sqrt((30 - 100 x 0.01) / 99); the interval is 1.96 of its standard error either side.
    before = {(str(i), "0"): 0.0 if i < 20 else 1.0 if i < 30 else 0.5 for i in range(100)}
    after = {(str(i), "0"): 1.0 if i < 20 else 0.0 if i < 30 else 0.5 for i in range(100)}
    paired = compare("a", before, "b", after)
    half = 1.959964 * math.sqrt((30 - 100 * 0.01) / 99) / 10
    assert math.isclose(paired.change, 0.1) and math.isclose(paired.change_high - paired.change, half)
    assert math.isclose(paired.p_value, sign_test(20, 10))


def test_a_small_p_value_keeps_its_digits_in_the_json() -> None:
    # 40 better, 5 worse: p = 7.9e-08, which rounded to 4 places, as the other figures are, read 0
    before = {(str(i), "0"): 0.0 if i < 40 else 1.0 for i in range(100)}
    after = {(str(i), "0"): 1.0 if i < 40 else 0.0 if i < 45 else 1.0 for i in range(100)}
    found = compare("a", before, "b", after).as_dict()
    assert found["p_value"] == float(f"{sign_test(40, 5):.3g}") > 0 and found["change"] == 0.35


def test_the_report_pairs_stages_only_on_the_same_split(tmp_path: Path) -> None:
    from gsm8k_tr import report

    for name, split, flags in (("base", "test", (0, 0, 1, 0)), ("sft", "test", (1, 0, 1, 1)),
                               ("grpo", "validation", (1, 1, 1, 1))):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"split": split, "n": 4, "accuracy": sum(flags) / 4}))
        (folder / "predictions.jsonl").write_text("".join(
            json.dumps({"question": f"q{i}", "gold": str(i), "correct": bool(f), "tokens": 5}) + "\n"
            for i, f in enumerate(flags)))
    found = report.comparisons(tmp_path)
    assert [(p.before, p.after, p.gained, p.lost) for p in found] == [("base", "sft", 2, 0)]  # grpo: other questions
    text = report.main(str(tmp_path)).read_text()
    assert "| base → sft | 4 | 0.250 → 0.750 | +0.500" in text and "grpo →" not in text


def test_the_compare_command_pairs_two_evaluation_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Two runs (a seed, a recipe change) evaluated on the same split: the user's own "did it pay?".
    from gsm8k_tr.cli import main

    for name, flags in (("a", (0, 1, 0, 0, 1)), ("b", (1, 1, 1, 0, 1)), ("other", (1, 1, 1, 1, 1))):
        (tmp_path / name).mkdir()
        first = 100 if name == "other" else 0  # another split's questions
        (tmp_path / name / "predictions.jsonl").write_text("".join(
            json.dumps({"question": f"q{first + i}", "gold": "1", "correct": bool(f), "tokens": 9,
                        "flexible_correct": name == "b"}) + "\n"
            for i, f in enumerate(flags)))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    # differences 1, 0, 1, 0, 0: mean 0.4, standard deviation sqrt(0.3), so 0.4 ± 1.96 x sqrt(0.3 / 5) = ± 0.48
    assert capsys.readouterr().out.strip().endswith(
        "+40.0 points (95% interval -8.0 to +88.0) on 5 questions; 2 better, 0 worse, exact sign test p = 0.5")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "predictions.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gained"] == 2
    # --flexible: by the last number anywhere, right in all of b's answers and none of a's
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "--flexible"]) == 0
    assert json.loads(capsys.readouterr().out)["gained"] == 5
    # a --limit run against a whole one: the comparison is on the questions both answered, and says what it left out
    limited = tmp_path / "limited" / "predictions.jsonl"
    limited.parent.mkdir()
    lines = (tmp_path / "b" / "predictions.jsonl").read_text().splitlines(keepends=True)
    limited.write_text("".join(lines[:2]))
    assert main(["compare", str(tmp_path / "a"), str(limited.parent)]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"on 2 questions; 1 better, 0 worse, exact sign test p = 1; left out, as only one of the two answered them: "
        f"3 questions of {tmp_path / 'a'}, 0 of {limited.parent}")
    assert main(["compare", str(limited.parent), str(tmp_path / "a"), "--json"]) == 0
    assert {k: v for k, v in json.loads(capsys.readouterr().out).items() if k.startswith("only")} == {
        "only_before": 0, "only_after": 3}
    run = tmp_path / "run"  # a run folder, whose evaluations are in eval/<stage>
    for stage in ("sft", "grpo"):
        (run / "eval" / stage).mkdir(parents=True)
        (run / "eval" / stage / "predictions.jsonl").write_text((tmp_path / "a" / "predictions.jsonl").read_text())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "predictions.jsonl").write_text("\n")
    for argv, message in ((["compare", str(tmp_path / "a"), str(tmp_path / "other")], "no question in common"),
                          (["compare", str(tmp_path / "a"), str(tmp_path / "none")], "no predictions.jsonl there"),
                          (["compare", str(run), str(run)], f"such as this run folder's {run / 'eval' / 'grpo'}, "
                                                            f"{run / 'eval' / 'sft'}"),
                          (["compare", str(tmp_path / "a"), str(tmp_path / "empty")],
                           "predictions.jsonl: no predictions in it (empty); evaluate again into that folder")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_several_pairs_are_pooled_question_by_question(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Two seeds of "before" and "after": q0-q2 better in both seeds, q3 in one, q4 worse in one.
    from gsm8k_tr.cli import main

    runs = {"a1": (0, 0, 0, 1, 1), "b1": (1, 1, 1, 1, 1), "a2": (0, 0, 0, 0, 1), "b2": (1, 1, 1, 1, 0)}
    for name, flags in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.jsonl").write_text("".join(
            json.dumps({"question": f"q{i}", "gold": "1", "correct": bool(f), "tokens": 9}) + "\n"
            for i, f in enumerate(flags)))
    folders = [str(tmp_path / n) for n in ("a1", "b1", "a2", "b2")]
    assert main(["compare", *folders]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "3 better, 0 worse" in lines[0] and "4 better, 1 worse" in lines[1]
    # Summing the pairs' own counts would give 7 against 1 (p = 0.07): q0-q2 counted twice. Per question: 4 against 1.
    assert lines[2] == ("over 2 runs, question by question: +60.0 points on average; 4 of 5 questions better, "
                        "1 worse, exact sign test p = 0.38")
    assert main(["compare", *folders, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [p["gained"] for p in found["pairs"]] == [3, 4] and found["pooled"]["gained"] == 4
    assert main(["compare", *folders[:3]]) == 2
    assert "give evaluations in pairs" in capsys.readouterr().err


def test_evaluations_asked_differently_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A shorter answer budget (or another prompt, split, dtype, sampling) moves accuracy by itself: the comparison
    # still runs, with a warning that names each difference; folders without metrics.json compare in silence.
    from gsm8k_tr.cli import main

    generation = {"max_new_tokens": 256, "do_sample": False}
    prompt = {"template": "{question}", "answer_tag": "cevap"}
    asked = {"a": ("test", generation, prompt), "b": ("test", generation, prompt),
             "short": ("test", {**generation, "max_new_tokens": 96}, prompt),
             "other_prompt": ("test", generation, {**prompt, "template": "Soru: {question}"})}
    for name, (split, settings, template) in asked.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.jsonl").write_text(json.dumps(
            {"question": "q0", "gold": "1", "correct": True, "tokens": 9}) + "\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"split": split, "generation": settings, "dtype": "float32", "evaluated_with": {"prompt": template}}))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "predictions.jsonl").write_text((tmp_path / "a" / "predictions.jsonl").read_text())

    for after, named in (("b", None), ("bare", None), ("short", "generation.max_new_tokens 256 -> 96"),
                         ("other_prompt", "prompt.template '{question}' -> 'Soru: {question}'")):
        assert main(["compare", str(tmp_path / "a"), str(tmp_path / after)]) == 0
        err = capsys.readouterr().err
        if named is None:
            assert "evaluated differently" not in err, err
        else:
            assert (f"{tmp_path / 'a'} and {tmp_path / after} were evaluated differently ({named}): the change mixes "
                    "the two models with the two ways of asking them") in err
