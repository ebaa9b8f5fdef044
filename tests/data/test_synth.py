"""Generated problems: deterministic, distinct, varied, noisy at the stated rate, and split without overlap."""

import random
from collections import Counter

from gsm8k_tr.data.synth import TEMPLATES, Problem, make_problems, tr_number
from gsm8k_tr.grading.answers import last_number, matches, parse_gold


def test_generation_is_seeded_and_distinct() -> None:
    assert make_problems(50, seed=7) == make_problems(50, seed=7)
    assert make_problems(50, seed=7) != make_problems(50, seed=8)
    questions = [r["question"] for r in make_problems(500)]
    assert len(set(questions)) == 500


def test_each_template_has_a_right_and_a_wrong_solution() -> None:
    r = random.Random(0)
    for template in TEMPLATES:
        forms = set()
        for _ in range(200):
            p: Problem = template(r)
            assert matches(last_number(p.solution), p.answer), (template.__name__, p.solution)
            assert not matches(last_number(p.mistake), p.answer), (template.__name__, p.mistake)
            assert last_number(p.question) is not None
            forms.add(p.question.split()[1])
        assert len(forms) > 1, template.__name__  # more than one name or sentence form


def test_noise_matches_the_real_data_and_gold_is_true() -> None:
    rows = make_problems(4000, seed=0)
    disagree = sum(not matches(last_number(r["solution"]), parse_gold(r["gold"])) for r in rows) / len(rows)
    assert 0.2 < disagree < 0.3  # the real GSM8K-TR solutions disagree with the official answer ~25% of the time
    clean = make_problems(500, seed=0, noisy=False)
    assert all(matches(last_number(r["solution"]), parse_gold(r["gold"])) for r in clean)


def test_covers_the_problem_kinds_in_turkish_notation() -> None:
    text = " ".join(r["question"] + " " + r["solution"] for r in make_problems(2000, seed=0))
    for marker in ("TL", "%", "dakika", "saat", "kişi", "kg", " x ", " / ", " + ", " - "):
        assert marker in text, marker
    assert any("." in w and w.replace(".", "").isdigit() for w in text.split())  # 1.250: thousands grouping
    assert any("," in w.rstrip(",.") for w in text.split() if w[:1].isdigit())  # 2,5: decimal comma
    assert tr_number(1250) == "1.250" and tr_number(2.5) == "2,5"


def test_prepared_splits_do_not_overlap(tmp_path) -> None:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data import prepare

    recipe = load_recipe(None, ["data.dataset=synthetic:600", "data.reference=none", "data.test_fraction=0.2"])
    result = prepare.prepare(recipe)
    train = {r["question"] for r in result["splits"]["train"]}
    test = {r["question"] for r in result["splits"]["test"]}
    assert train and test and not train & test
    assert Counter(r["gold_source"] for r in result["splits"]["test"]) == {"solution": len(test)}
    assert result["report"]["solution_gold_disagreements"] > 0
