"""The built-in models' training text: no test questions, no tags in answers."""

from __future__ import annotations

from gsm8k_tr import builtin
from gsm8k_tr.data.prepare import split_position


def test_pretraining_never_sees_a_question_a_test_split_can_hold() -> None:
    texts = builtin.pretraining_texts(400, seed=0)
    answers = [t.split("### Asistan:\n", 1)[1] for t in texts]  # the instruction names the tags; answers never use them
    assert answers and all("<sebep>" not in a and "<cevap>" not in a for a in answers)
    from gsm8k_tr.data import synth

    for row in synth.make_problems(400, 1):  # the same draw pretraining_texts makes
        if split_position(row["question"]) < builtin.HELD_OUT_BAND:
            assert not any(row["question"] in t for t in texts)
