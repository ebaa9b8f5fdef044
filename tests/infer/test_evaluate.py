"""evaluate, generate and report: metrics that agree with the predictions, pass@k/maj@k, bad input, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, run_cli

from gsm8k_tr.grading.answers import is_correct, is_correct_flexible
from gsm8k_tr.infer.evaluate import majority_correct, metrics, pass_at_k


def sample(text: str, correct: bool, tokens: int = 10) -> dict:
    return {"completion": text, "correct": correct, "flexible_correct": correct, "strict_format": True,
            "soft_format": True, "tokens": tokens, "truncated": False}


def test_pass_at_k_matches_the_closed_form():
    from math import comb

    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 3), (5, 5, 1), (8, 2, 8)]:
        expected = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_and_majority_at_k_on_hand_made_predictions():
    records = [
        # 2 of 4 right: a 2-2 tie between 4 (right, first) and 5 (wrong, last)
        {"samples": [sample("<cevap>4</cevap>", True), sample("<cevap>5</cevap>", False),
                     sample("<cevap>4</cevap>", True), sample("<cevap>5</cevap>", False)],
         "majority_correct": majority_correct(["<cevap>4</cevap>", "<cevap>5</cevap>", "<cevap>4</cevap>",
                                               "<cevap>5</cevap>"], "4", "cevap")},
        # 3 of 4 right: majority right
        {"samples": [sample("<cevap>7</cevap>", True)] * 3 + [sample("<cevap>1</cevap>", False)],
         "majority_correct": majority_correct(["<cevap>7</cevap>"] * 3 + ["<cevap>1</cevap>"], "7", "cevap")},
        # none right
        {"samples": [sample("yok", False)] * 4, "majority_correct": majority_correct(["yok"] * 4, "2", "cevap")},
    ]
    result = metrics(records)
    assert result["pass_at_k"] == pytest.approx(2 / 3)  # k = n = 4: any correct sample counts
    # Tie 2-2 goes to the earliest answer (4, right) in the first record; the second is right; the third wrong.
    assert records[0]["majority_correct"] is True
    assert result["maj_at_k"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(5 / 12)  # over all samples
    assert result["n"] == 3 and result["samples"] == 4


def test_majority_vote_uses_the_graders_reading():
    # "1.250" reads as 1250 or 1.25; votes for the reading the grader credits.
    assert majority_correct(["<cevap>1.250</cevap>", "<cevap>1250</cevap>", "<cevap>9</cevap>"], "1250", "cevap")


cli = run_cli  # in this process: see conftest.run_cli


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval")
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={run}", "--model", str(tiny_model_dir),
                 "--limit", "12", "--samples", "3", "--output", str(run / "eval" / "base"), "eval.max_new_tokens=48")
    assert result.returncode == 0, result.stderr[-2000:]
    return run / "eval" / "base"


def test_metrics_agree_with_predictions_recomputed_independently(evaluated):
    result = json.loads((evaluated / "metrics.json").read_text())
    records = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
    assert result["n"] == len(records) == 12 and result["samples"] == 3
    samples = [s for r in records for s in r["samples"]]
    for record in records:
        assert {"question", "gold", "completion", "extracted", "correct"} <= set(record)
        for s in record["samples"]:
            # Regrade from the stored text with the grader itself.
            assert s["correct"] == is_correct(s["completion"], record["gold"], "cevap")
            assert s["flexible_correct"] == is_correct_flexible(s["completion"], record["gold"])
    assert result["accuracy"] == pytest.approx(sum(is_correct(s["completion"], r["gold"], "cevap")
                                                   for r in records for s in r["samples"]) / len(samples))
    assert result["mean_completion_tokens"] == pytest.approx(sum(s["tokens"] for s in samples) / len(samples))
    assert result["truncated_rate"] == pytest.approx(sum(s["truncated"] for s in samples) / len(samples))
    assert 0 < result["mean_completion_tokens"] <= 48
    # The base model never saw the tags.
    assert result["strict_format_rate"] == 0


def test_batched_greedy_answers_equal_one_at_a_time(tiny_model_dir):
    import torch

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig, PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(10, seed=3)]
    batched = generation.generate(model, tokenizer, prompts, 40, batch_size=5)
    for prompt, (answer,) in zip(prompts, batched):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=generation.stop_ids(model))
        assert answer.text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_answers_stop_at_the_models_context(tiny_model_dir, caplog):
    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.infer import generation

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    # A stop the model never writes, so that every answer runs to its limit: pretraining masked <|endoftext|> out as
    # padding (the model stops where it likes with its own stop, which this test is not about).
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sentence = "Ali 3 elma aldı ve 4 armut sattı. "
    long, short = sentence * 28, sentence * 2  # the long one leaves 35 of the 512-token context
    room = 512 - len(tokenizer(long, add_special_tokens=False)["input_ids"])
    assert 0 < room < 40
    # GPT-2's positions run out past the context (an IndexError before): the long prompt's batch stops there.
    (cut,), (free,), (alone,) = generation.generate(model, tokenizer, [long, short, short], 40, batch_size=2)
    assert cut.truncated and cut.tokens == room and free.tokens <= room  # its batch stops at the context
    assert alone.tokens == 40 or not alone.truncated  # a batch of short prompts keeps max_new_tokens
    assert "2 of 3 prompts were in batches whose longest prompt leaves fewer than 40 new tokens" in caplog.text
    with pytest.raises(UserError, match="prompt 2 of 2 is 5.. tokens and the model's context is 512"):
        generation.generate(model, tokenizer, [short, sentence * 31], 40)


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--samples", "0"], "--samples must be at least 1"),
    (["--split", "nope"], "split 'nope' not found"),
])
def test_bad_evaluate_arguments(args, message, tmp_path, tiny_model_dir):
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(tiny_model_dir), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "junk").mkdir()
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(tmp_path / "junk"))
    assert result.returncode == 2 and "neither a model" in result.stderr


def test_a_run_folder_or_a_killed_stage_given_as_the_model_says_what_to_give(tmp_path):
    run, killed = tmp_path / "run", tmp_path / "killed"
    for stage in ("sft", "grpo"):  # finished stage outputs, as `run_folder.is_finished` knows them
        (run / stage / "merged").mkdir(parents=True)
        (run / stage / "manifest.json").write_text("{}")
        (run / stage / "merged" / "config.json").write_text("{}")
    (killed / "checkpoint-4").mkdir(parents=True)
    result = cli("generate", "--config", str(TINY_RECIPE), "--model", str(run), "2+2 kaçtır?")
    assert result.returncode == 2 and f"a run folder: give one of its stages, {run / 'grpo'} or {run / 'sft'}" \
        in result.stderr, result.stderr
    result = cli("generate", "--config", str(TINY_RECIPE), "--model", str(killed), "2+2 kaçtır?")
    assert result.returncode == 2 and "a stage that did not finish: run that stage again with --resume" \
        in result.stderr, result.stderr


def test_a_model_path_that_is_not_there_is_one_line_before_the_data_is_prepared(tmp_path):
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(tmp_path / "gone"))
    assert result.returncode == 2 and "neither a model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_relative_model_path_that_is_not_there(tmp_path, monkeypatch):
    # Two '/' or a letter outside ASCII make no Hub id: a mistyped path, before any data, not the Hub's repo-id error
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("runs/x/sft", "çıktı/sft"):
        result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", spec)
        assert result.returncode == 2 and f"{spec!r} is neither a model" in result.stderr, result.stderr
        assert not (tmp_path / "data").exists()
    # A Hub id whose owner is a local folder: the Hub's error, and the folder that has no such model
    (tmp_path / "runs").mkdir()
    result = cli("generate", "--config", str(TINY_RECIPE), "--model", "runs/sft", "2+2 kaçtır?")
    assert result.returncode == 2 and "if a folder was meant, runs has no 'sft'" in result.stderr, result.stderr


def test_an_adapter_on_a_builtin_base_loads_it(tmp_path, tiny_model_dir):
    # `builtin:NAME` is no Hub id and no folder, but the model it names is built: not "cannot be found"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "adapter"  # with its tokenizer, as a stage's adapter/ folder has it
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["c_attn"]))
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "builtin:tiny-gpt2"}))
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(adapter),
                 "--limit", "2", "eval.max_new_tokens=4", "--output", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_adapter_config_that_is_no_object(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("[]")  # an AttributeError where its base model was read
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(adapter))
    assert result.returncode == 2 and "adapter_config.json: not a JSON object, as it was written" in result.stderr


@pytest.mark.parametrize("base", ["{tmp}/gone", "runs/x/sft/merged"])  # absolute; relative, trained elsewhere
def test_an_adapter_whose_base_is_gone(tmp_path, base):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = base.format(tmp=tmp_path)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(adapter))
    assert result.returncode == 2 and f"names base model {base!r}, which cannot be found" in result.stderr


def test_an_empty_split(tmp_path, tiny_model_dir):
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "report.json").write_text("{}")
    (data / "train.jsonl").write_text(json.dumps({"question": "a 1", "answer": "1"}) + "\n")
    (data / "test.jsonl").write_text("")
    result = cli("evaluate", "--config", str(TINY_RECIPE), f"data.dataset={data}", "--model", str(tiny_model_dir))
    assert result.returncode == 2 and "is empty" in result.stderr


def test_generate_prints_the_answer_and_reads_stdin(tiny_model_dir):
    result = cli("generate", "--config", str(TINY_RECIPE), "--model", str(tiny_model_dir), "eval.max_new_tokens=20",
                 stdin="Ali'nin 3 elması var. 2 elma daha alıyor. Kaç elması olur?\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Ali'nin 3 elması" in result.stdout and ("no answer block" in result.stdout or "→" in result.stdout)
    # A file saved on Windows: a byte-order mark and CRLF line ends, and blank lines between questions
    windows = cli("generate", "--config", str(TINY_RECIPE), "--model", str(tiny_model_dir), "eval.max_new_tokens=4",
                  stdin="\ufeffAli'nin 3 elması var. Kaç elması olur?\r\n\r\n \r\n"
                        "Ayşe 5 kalem aldı. Kaç kalemi var?\r\n")
    assert windows.returncode == 0, windows.stderr[-2000:]
    assert "\ufeff" not in windows.stdout and "\r" not in windows.stdout
    assert " Ali'nin 3 elması" in windows.stdout and "Ayşe 5 kalem" in windows.stdout


def test_generate_tells_a_question_with_an_equals_sign_from_an_override(tiny_model_dir):
    # "x=5 ..." looks like key=value, but x is no recipe key: it is a question; eval.max_new_tokens=1 is an override
    # (one token: the answer is cut there unless the model stops at once).
    result = cli("generate", "--config", str(TINY_RECIPE), "--model", str(tiny_model_dir), "eval.max_new_tokens=1",
                 "x=5 ise x+3 kaçtır?")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "x=5 ise x+3" in result.stdout and "eval.max_new_tokens=1" in result.stdout  # cut at the override's limit


def test_report_writes_non_empty_plots(tmp_path):
    run = tmp_path / "run"
    for stage in ("sft", "grpo"):
        (run / stage).mkdir(parents=True)
    (run / "sft" / "log_history.json").write_text(json.dumps([{"step": s, "loss": 2.0 / s} for s in range(1, 6)]))
    grpo = [{"step": s, "reward": 0.1 * s, "rewards/correctness_reward_func/mean": 0.05 * s,
             "rewards/xmlcount_reward_func/mean": 0.02 * s} for s in range(1, 6)]
    grpo += [{"step": s, "eval/accuracy": s / 100} for s in range(0, 21)]  # 21 checks: the first and last 8 listed
    (run / "grpo" / "log_history.json").write_text(json.dumps(grpo))
    for stage, accuracy in (("base", 0.0), ("sft", 0.3), ("grpo", 0.4)):
        folder = run / "eval" / stage
        folder.mkdir(parents=True)
        sampled = {"samples": 4, "pass_at_k": 0.75, "maj_at_k": 0.5, "mean_completion_tokens": 36.9375}
        (folder / "metrics.json").write_text(json.dumps({"split": "test", "n": 2, "accuracy": accuracy,
                                                         "flexible_accuracy": accuracy, "strict_format_rate": 0.9,
                                                         **(sampled if stage == "grpo" else {})}))
        (folder / "predictions.jsonl").write_text("\n".join(
            json.dumps({"question": f"q{t}", "gold": "1", "correct": False, "tokens": t}) for t in (12, 30)))
    result = cli("report", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("rewards.png", "sft_loss.png", "stages.png", "lengths.png"):
        data = (run / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    report = (run / "report.md").read_text()
    assert "| grpo | test | 2 | 0.400" in report and "![GRPO rewards](rewards.png)" in report  # says which split
    # an evaluation with several samples a question: its pass@k and maj@k, which the table left out
    assert "| truncated_rate | samples | pass_at_k | maj_at_k |" in report
    assert "| 36.9 |  | 4 | 0.750 | 0.500 |" in report
    assert "| sft | test | 2 | 0.300 | 0.300 | 0.900 |  |  |  |  |  |  |" in report
    # GRPO's held-out checks by step, where only the plot showed them; a long run's ends
    assert ("Held-out accuracy during GRPO, by step (greedy answers to the held-out questions; plotted with the "
            "rewards): 0: 0.000, 1: 0.010, 2: 0.020, 3: 0.030, 4: 0.040, 5: 0.050, 6: 0.060, 7: 0.070, …, 13: 0.130, "
            "14: 0.140, 15: 0.150, 16: 0.160, 17: 0.170, 18: 0.180, 19: 0.190, 20: 0.200.") in report


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    result = cli("report", str(tmp_path))
    assert result.returncode == 2 and "no stage outputs" in result.stderr
