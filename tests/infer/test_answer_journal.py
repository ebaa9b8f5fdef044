"""An evaluation stopped part-way answers only the rest when run again, with the same tokens as one never stopped."""

from __future__ import annotations

import copy
import json
import logging
from itertools import count

import pytest
from conftest import TINY_RECIPE

from gsm8k_tr.errors import UserError
from gsm8k_tr.infer import answer_journal, generation

KEY = {"weights": "w", "prompts": "p", "samples": 2}
DECODE = generation._decode


class Stopped(Exception):
    """Stands for the kill: raised by the decoding of a chosen batch."""


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model_dir):
    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig, PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(11, seed=5)]
    return model, tokenizer, prompts


def answer(model_and_prompts, journal=None):
    """Two sampled answers to each of 11 prompts, in batches of 3 (4 batches, the last short)."""
    model, tokenizer, prompts = model_and_prompts
    found = generation.generate(model, tokenizer, prompts, 24, batch_size=3, temperature=1.0, samples=2, seed=7,
                                journal=journal)
    return [[(c.text, c.tokens, c.truncated) for c in row] for row in found]


def stop_at(monkeypatch, batch: int) -> list[int]:
    """Make the decoding of the `batch`-th decoded batch raise; returns the list of batches decoded."""
    decoded: list[int] = []

    def decode(*args, **kwargs):
        if len(decoded) == batch:
            raise Stopped
        decoded.append(len(decoded))
        return DECODE(*args, **kwargs)

    monkeypatch.setattr(generation, "_decode", decode)
    return decoded


def stopped(model_and_prompts, output, monkeypatch, batch: int) -> None:
    """An evaluation into `output` that stops as its `batch`-th batch is decoded."""
    stop_at(monkeypatch, batch)
    with pytest.raises(Stopped), answer_journal.kept_answers(output, KEY, device()) as journal:
        answer(model_and_prompts, journal)


def test_a_stopped_evaluation_resumes_with_the_same_sampled_answers(model_and_prompts, tmp_path, monkeypatch, caplog):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    stopped(model_and_prompts, output, monkeypatch, 2)
    assert f"the answers to 6 questions are kept in {answer_journal.path_for(output)}" in caplog.text
    lines = answer_journal.path_for(output).read_text().splitlines()
    assert json.loads(lines[0])["key"]["samples"] == 2 and len(lines) == 3  # the key, then batches 0 and 1
    decoded = stop_at(monkeypatch, 99)
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert journal.resumed_prompts == 6
        assert answer(model_and_prompts, journal) == whole
    assert decoded == [0, 1]  # only the last two of the four batches were answered again
    answer_journal.finished(output)
    assert not answer_journal.path_for(output).exists()


def test_a_line_cut_short_by_the_kill_ends_what_is_kept(model_and_prompts, tmp_path, monkeypatch):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    stopped(model_and_prompts, output, monkeypatch, 3)
    path = answer_journal.path_for(output)
    text = path.read_bytes()
    path.write_bytes(text[:-40])  # the third batch's line, half-written
    decoded = stop_at(monkeypatch, 99)
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert journal.resumed_prompts == 6
        assert answer(model_and_prompts, journal) == whole
    assert decoded == [0, 1]
    assert len(path.read_text().splitlines()) == 5  # the cut line went; the key and four whole batches


def test_a_journal_killed_before_its_first_batch_is_begun_anew(model_and_prompts, tmp_path, monkeypatch):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    path = answer_journal.path_for(output)
    path.write_text(json.dumps({"key": {"format": answer_journal.FORMAT, **KEY}}) + "\n")  # its key line only
    stopped(model_and_prompts, output, monkeypatch, 2)
    decoded = stop_at(monkeypatch, 99)
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert journal.resumed_prompts == 6
        assert answer(model_and_prompts, journal) == whole
    assert decoded == [0, 1]


def test_answers_for_other_inputs_are_answered_again_with_the_change_named(model_and_prompts, tmp_path,
                                                                           monkeypatch, caplog):
    output = tmp_path / "eval"
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        answer(model_and_prompts, journal)
    decoded = stop_at(monkeypatch, 99)
    with caplog.at_level(logging.WARNING), \
            answer_journal.kept_answers(output, {**KEY, "samples": 3}, device()) as journal:
        assert journal.resumed_prompts == 0
        answer(model_and_prompts, journal)
    assert decoded == [0, 1, 2, 3]
    assert "other inputs (samples 2 -> 3)" in caplog.text


def test_one_evaluation_writes_an_output_at_a_time(tmp_path):
    pytest.importorskip("fcntl")
    output = tmp_path / "eval"
    with answer_journal.kept_answers(output, KEY, device()), pytest.raises(UserError, match="another evaluation"):
        with answer_journal.kept_answers(output, KEY, device()):
            pass


def test_a_journal_that_cannot_be_written_leaves_the_evaluation_to_go_on(model_and_prompts, tmp_path, caplog):
    whole = answer(model_and_prompts)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING), answer_journal.kept_answers(blocked / "eval", KEY, device()) as journal:
        assert journal is None
        assert answer(model_and_prompts, journal) == whole
    assert "cannot keep answered batches" in caplog.text


def test_evaluate_resumes_and_says_how_many_it_kept(tiny_model_dir, tmp_path, monkeypatch):
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path}", "eval.batch_size=4", "eval.max_new_tokens=16"])
    whole = evaluate.main(str(tiny_model_dir), recipe, output=str(tmp_path / "whole"))
    assert "resumed_questions" not in whole
    stop_at(monkeypatch, 2)
    with pytest.raises(Stopped):
        evaluate.main(str(tiny_model_dir), recipe, output=str(tmp_path / "part"))
    stop_at(monkeypatch, 99)
    resumed = evaluate.main(str(tiny_model_dir), recipe, output=str(tmp_path / "part"))
    assert resumed["resumed_questions"] == 8
    assert not answer_journal.path_for(tmp_path / "part").exists()
    predictions = [(tmp_path / name / "predictions.jsonl").read_text() for name in ("part", "whole")]
    assert predictions[0] == predictions[1]


def device():
    import torch

    return torch.device("cpu")


def test_the_key_changes_with_the_weights_their_dtype_and_the_settings(model_and_prompts):
    import torch

    from gsm8k_tr.config import Recipe
    from gsm8k_tr.infer.evaluate import _answers_depend_on

    model, tokenizer, prompts = model_and_prompts
    recipe = Recipe()
    key = _answers_depend_on(model, tokenizer, prompts, recipe, 1, 0.0)
    assert key == _answers_depend_on(model, tokenizer, prompts, recipe, 1, 0.0)
    fewer = _answers_depend_on(model, tokenizer, prompts[1:], recipe, 1, 0.0)
    assert key["prompts"] != fewer["prompts"] and (key["questions"], fewer["questions"]) == (11, 10)
    assert key["prompts"] != _answers_depend_on(model, tokenizer, prompts[::-1], recipe, 1, 0.0)["prompts"]
    assert key["generation"] != _answers_depend_on(model, tokenizer, prompts, recipe, 1, 0.7)["generation"]
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters())[0, 0] += 1e-3
    assert key["weights"] != _answers_depend_on(changed, tokenizer, prompts, recipe, 1, 0.0)["weights"]
    assert answer_journal.weights_digest(copy.deepcopy(model).to(torch.bfloat16)) != key["weights"]


def test_a_batch_edited_by_hand_is_answered_again_with_those_after_it(model_and_prompts, tmp_path, monkeypatch):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    stopped(model_and_prompts, output, monkeypatch, 3)
    path = answer_journal.path_for(output)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["completions"][0] = {"text": "7"}  # no token count: no completion
    path.write_text("\n".join([*lines[:2], json.dumps(edited), *lines[3:]]) + "\n")
    decoded = stop_at(monkeypatch, 99)
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert answer(model_and_prompts, journal) == whole
        assert journal.resumed_prompts == 3  # batch 0's only, as evaluate reports it
    assert decoded == [0, 1, 2]  # batch 1 and the two after it
    assert len(path.read_text().splitlines()) == 5


def test_a_batch_that_cannot_be_kept_ends_the_journal_not_the_evaluation(model_and_prompts, tmp_path, monkeypatch,
                                                                         caplog):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    read = answer_journal._rng_state
    calls = count()
    monkeypatch.setattr(answer_journal, "_rng_state",
                        lambda device: read(device) if next(calls) < 2 else (_ for _ in ()).throw(RuntimeError("no")))
    with caplog.at_level(logging.WARNING), answer_journal.kept_answers(output, KEY, device()) as journal:
        assert answer(model_and_prompts, journal) == whole
        assert journal.answered == 6
    assert "cannot keep answered batches (no)" in caplog.text
    assert len(answer_journal.path_for(output).read_text().splitlines()) == 3  # the key and the two batches kept


def another_process(monkeypatch, value=None, values=None) -> None:
    """Stand for a second process of a launch: each agreement sees its `value` beside this one's (or the next of
    `values`, one per agreement)."""
    others = iter(values) if values is not None else None
    monkeypatch.setattr(answer_journal, "each_process",
                        lambda mine: [mine, next(others) if others is not None else value])


def test_under_a_launch_each_process_takes_the_fewest_batches_any_process_kept(model_and_prompts, tmp_path,
                                                                               monkeypatch):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    stopped(model_and_prompts, output, monkeypatch, 3)  # this process kept 3 batches; the other, 1
    decoded = stop_at(monkeypatch, 99)
    another_process(monkeypatch, 1)
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert journal.resumed_prompts == 3
        assert answer(model_and_prompts, journal) == whole  # the generators as they were after batch 0
    assert decoded == [0, 1, 2]
    assert len(answer_journal.path_for(output).read_text().splitlines()) == 5


def test_under_a_launch_a_batch_another_process_cannot_read_is_answered_again_here(model_and_prompts, tmp_path,
                                                                                   monkeypatch, caplog):
    whole = answer(model_and_prompts)
    output = tmp_path / "eval"
    stopped(model_and_prompts, output, monkeypatch, 3)
    decoded = stop_at(monkeypatch, 99)
    another_process(monkeypatch, values=[3, 1, 0])  # at the start 3 batches; batch 0 reads there, batch 1 does not
    with caplog.at_level(logging.WARNING), answer_journal.kept_answers(output, KEY, device()) as journal:
        assert answer(model_and_prompts, journal) == whole
    assert decoded == [0, 1, 2]
    assert "batch 1 does not read as this evaluation's in another process" in caplog.text


def test_under_a_launch_a_process_locked_out_or_without_a_journal_decides_for_all(tmp_path, monkeypatch):
    output = tmp_path / "eval"
    another_process(monkeypatch, -2)  # another evaluation holds the other process's file
    with pytest.raises(UserError, match="another evaluation is writing"), \
            answer_journal.kept_answers(output, KEY, device()):
        pass
    another_process(monkeypatch, -1)  # the other process could not open its file
    with answer_journal.kept_answers(output, KEY, device()) as journal:
        assert journal is None
    assert list(tmp_path.iterdir()) == []  # nothing left behind here either


def test_each_process_of_a_launch_keeps_its_own_journal_and_the_main_one_removes_them_all(tmp_path, monkeypatch):
    output = tmp_path / "eval"

    class Rank1:
        process_index, num_processes = 1, 2

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(answer_journal, "process_state", lambda: Rank1)
    assert answer_journal.path_for(output) == tmp_path / ".eval.answers.1-of-2.jsonl"
    for name in (".eval.answers.jsonl", ".eval.answers.0-of-2.jsonl", ".eval.answers.1-of-2.jsonl",
                 ".eval.answers.0-of-4.jsonl", ".evaluation.answers.jsonl", ".eval.answers.x-of-2.jsonl"):
        (tmp_path / name).write_text("")
    answer_journal.finished(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".eval.answers.x-of-2.jsonl", ".evaluation.answers.jsonl"]
