"""Stage plumbing: TRL configs from recipes, checkpoints, stage folders, tokens, LoRA targets, data rows."""

from __future__ import annotations

import json

import pytest

from gsm8k_tr import modeling, placement
from gsm8k_tr.config import LoraConfig, ModelConfig, load_recipe
from gsm8k_tr.data import examples as stage_rows
from gsm8k_tr.data import splits
from gsm8k_tr.errors import UserError
from gsm8k_tr.train import stage
from gsm8k_tr.train.checkpoints import last_checkpoint
from gsm8k_tr.train.lora import lora_config
from gsm8k_tr.train.trl_configs import check_report_to, trl_config

trl = pytest.importorskip("trl")

FORCED = {"output_dir": ("/tmp/x", "it is {output_dir}/sft/checkpoints"), "seed": (1, "set the top-level 'seed'")}


def sft_config(values):
    return trl_config(trl.SFTConfig, "sft", values, {"bf16": False, "report_to": []}, FORCED)


@pytest.mark.parametrize("values, message", [
    ({"max_stepz": 3}, "unknown recipe key 'sft.max_stepz'"),        # typo names section and key
    ({"output_dir": "elsewhere"}, "'sft.output_dir' is set by gsm8k-tr"),  # forced keys are not the recipe's
    ({"seed": 3}, "top-level 'seed'"),
    ({"max_steps": "many"}, "'sft.max_steps' must be int"),          # wrong type names the key
    ({"learning_rate": "fast"}, "'sft.learning_rate' must be float"),
])
def test_trl_config_rejects_bad_keys(values, message):
    with pytest.raises(UserError, match=message):
        sft_config(values)


def test_trl_config_passes_keys_through_and_reads_yaml_floats():
    config = sft_config({"max_steps": 7, "learning_rate": "5e-5"})  # YAML 1.1 reads 5e-5 as a string
    assert config.max_steps == 7 and config.learning_rate == 5e-5 and config.seed == 1


@pytest.mark.parametrize("name", ["gradient_checkpointing", "activation_checkpointing"])
def test_either_checkpointing_name_overrides_our_default(name):
    config = trl_config(trl.SFTConfig, "sft", {name: True}, {"activation_checkpointing": False, "bf16": False,
                                                             "report_to": []}, FORCED)
    assert config.gradient_checkpointing is True  # the old name: every transformers has it


def test_a_transformers_before_the_rename_takes_the_new_names_spelled_the_old_way():
    # transformers before 5.23 (the one vLLM's extra installs) knows only `gradient_checkpointing`.
    import dataclasses

    @dataclasses.dataclass
    class OldArguments:
        output_dir: str = ""
        seed: int = 0
        dataloader_pin_memory: bool = True
        gradient_checkpointing: bool = True
        gradient_checkpointing_kwargs: dict | None = None

    ours = trl_config(OldArguments, "sft", {}, {"activation_checkpointing": False}, FORCED)
    assert ours.gradient_checkpointing is False
    asked = trl_config(OldArguments, "sft", {"activation_checkpointing": True,
                                             "activation_checkpointing_kwargs": {"use_reentrant": False}},
                       {"activation_checkpointing": False}, FORCED)
    assert asked.gradient_checkpointing is True and asked.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_trl_value_errors_become_one_line_user_errors():
    with pytest.raises(UserError, match="recipe section 'grpo'"):
        trl_config(trl.GRPOConfig, "grpo", {"per_device_train_batch_size": 3, "num_generations": 2},
                            {"bf16": False, "report_to": []}, FORCED)


def test_check_positive_names_the_key():
    with pytest.raises(UserError, match="'sft.per_device_train_batch_size' must be at least 1"):
        sft_config({"per_device_train_batch_size": 0})  # before TRL, which would divide by it
    with pytest.raises(UserError, match="'sft.max_steps' must be at least 1"):
        sft_config({"max_steps": 0})
    with pytest.raises(UserError, match="'sft.save_steps' must be at least 1"):
        sft_config({"save_steps": 0.5})
    assert sft_config({"max_steps": -1}).max_steps == -1  # -1: train by epochs


def test_precision_is_fp32_on_cpu_and_refuses_bf16_where_the_cpu_lacks_it(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert placement.training_precision({}, "sft") == {"bf16": False, "fp16": False}
    monkeypatch.setattr(placement, "cpu_bf16", lambda: False)  # with it: tests/infer/test_device.py
    with pytest.raises(UserError, match="'grpo.bf16'"):
        placement.training_precision({"bf16": True}, "grpo")


def _checkpoint(folder, step, complete=True, weights_cut_short=False):
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    weights = path / "adapter_model.safetensors"
    save_file({"lora_A": torch.zeros(4, 4)}, str(weights))
    if weights_cut_short:  # a disk that failed mid-write: the header is whole, the tensor data is not
        weights.write_bytes(weights.read_bytes()[:-10])
    if complete:  # else an interrupted in-place save: weights but no trainer state
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_last_checkpoint_skips_incomplete_ones(tmp_path, caplog):
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, complete=False)
    _checkpoint(tmp_path, 40, weights_cut_short=True)  # resuming from it stopped in safetensors' traceback
    assert last_checkpoint(tmp_path).endswith("checkpoint-20")
    assert "checkpoint-30" in caplog.text and "checkpoint-40" in caplog.text and "incomplete" in caplog.text


def test_begin_refuses_an_existing_stage_and_resumes_or_overwrites(tmp_path):
    recipe = load_recipe(None, {"output_dir": str(tmp_path)})
    folder, checkpoint, done = stage.begin(recipe, "sft", resume=False, overwrite=False)
    assert folder == tmp_path / "sft" and checkpoint is None and not done
    _checkpoint(folder / "checkpoints", 5)
    with pytest.raises(UserError, match="--resume"):
        stage.begin(recipe, "sft", resume=False, overwrite=False)
    assert stage.begin(recipe, "sft", resume=True, overwrite=False)[1].endswith("checkpoint-5")
    assert stage.begin(recipe, "sft", resume=False, overwrite=True)[1] is None
    assert not (folder / "checkpoints" / "checkpoint-5").exists()
    with pytest.raises(UserError, match="contradict"):
        stage.begin(recipe, "sft", resume=True, overwrite=True)


def test_stop_token_must_be_one_token(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    with pytest.raises(UserError, match="model.stop_token '<\\|bitti\\|>' is not a single token"):
        modeling.configure_tokens(tokenizer, model, "<|bitti|>")
    assert modeling.configure_tokens(tokenizer, model, None) == tokenizer.eos_token  # null: eos


def test_pad_token_is_added_and_differs_from_stop(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    assert tokenizer.pad_token is None  # like GPT-2
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    stop = tokenizer.convert_tokens_to_ids("<|stop|>")
    assert tokenizer.pad_token_id not in (None, stop)
    assert model.generation_config.eos_token_id[0] == stop


@pytest.mark.parametrize("make, expected", [
    # GPT-2: Conv1D layers, transposed weights; PEFT's own default would be c_attn only.
    ("gpt2", {"c_attn", "c_proj", "c_fc"}),
    # Llama family (SmolLM2's architecture): nn.Linear projections.
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_lora_targets_every_linear_layer_but_the_head(make, expected):
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if make == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    config = lora_config(LoraConfig(r=2, alpha=4), model)
    assert config.fan_in_fan_out == (make == "gpt2")
    peft_model = get_peft_model(model, config)
    adapted = {name.split(".")[-4] for name, _ in peft_model.named_parameters() if "lora_A" in name}
    assert adapted == expected


def test_sft_rows_leave_out_disagreeing_solutions_stated_results_and_overlong_rows():
    recipe = load_recipe(None, {})
    rows = [
        {"question": "Soru bir", "solution": "1+1=2", "answer": "2", "solution_agrees": True},
        {"question": "Soru iki", "solution": "1+1=3", "answer": "2", "solution_agrees": False},  # would teach 3
        {"question": "Soru üç " * 50, "solution": "2+2=4", "answer": "4", "solution_agrees": True},  # too long
        # as one GSM8K-TR answer in six: the result stated, no step shown; it would teach answering without reasoning
        {"question": "Soru dört", "solution": "Tom 7 yaşındadır.", "answer": "7", "solution_agrees": True},
    ]
    words = lambda text: len(text.split())  # noqa: E731
    examples, counts = stage_rows.sft_examples(rows, recipe, "<|stop|>", words, max_length=80)
    assert counts == {"rows": 4, "dropped_no_solution": 0, "dropped_no_work": 1, "dropped_disagreeing": 1,
                      "dropped_too_long": 1, "used": 1}
    assert examples[0]["completion"].endswith("</cevap><|stop|>")
    recipe.data.sft_keep_disagreeing = recipe.data.sft_keep_no_work = True
    kept = stage_rows.sft_examples(rows, recipe, "<|stop|>", words, max_length=80)[1]
    assert kept["dropped_disagreeing"] == kept["dropped_no_work"] == 0 and kept["used"] == 3


def test_grpo_rows_leave_room_for_the_completion():
    recipe = load_recipe(None, {})
    rows = [{"question": "kısa", "answer": "2"}, {"question": "uzun " * 40, "answer": "3"}]
    examples, counts = stage_rows.grpo_examples(rows, recipe, lambda text: len(text.split()), 30, 70)
    assert counts == {"rows": 2, "dropped_too_long": 1, "used": 1} and examples[0]["answer"] == "2"


def test_a_stage_left_without_rows_names_the_keys_that_let_them_in():
    # Before, every case ended "check the data, or lower the completion length", whatever had left the rows out.
    recipe = load_recipe(None, {})
    rows = [{"question": "Soru iki", "solution": "1+1=3", "answer": "2", "solution_agrees": False},
            {"question": "Soru dört", "solution": "Tom 7 yaşındadır.", "answer": "7", "solution_agrees": True}]
    examples, counts = stage_rows.sft_examples(rows, recipe, "<|stop|>", lambda text: len(text.split()), 80)
    with pytest.raises(UserError) as error:
        stage_rows.require_rows(examples, counts, "sft")
    assert str(error.value).endswith("; data.sft_keep_no_work=true keeps solutions that only state the result; or "
                                     "data.sft_keep_disagreeing=true keeps solutions that contradict the verified "
                                     "answer")
    examples, counts = stage_rows.grpo_examples([{"question": "uzun " * 40, "answer": "3"}], recipe,
                                                lambda text: len(text.split()), 30, 70)
    with pytest.raises(UserError, match="; lower grpo.max_completion_length, which leaves the prompts no room$"):
        stage_rows.require_rows(examples, counts, "grpo")


def test_an_empty_split_is_an_error(tmp_path):
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(UserError, match="split 'test' .* is empty; check data.dataset and data.test_fraction$"):
        splits.load_split(tmp_path, "test")
    (tmp_path / "validation.jsonl").write_text("")
    with pytest.raises(UserError, match="is empty; check data.dataset and data.validation_fraction$"):
        splits.load_split(tmp_path, "validation")


def test_report_to_a_backend_that_is_not_installed_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = sft_config({"report_to": ["wandb"]})
    with pytest.raises(UserError, match="'sft.report_to' names 'wandb', which is not installed"):
        check_report_to("sft", config)


def test_a_run_stopped_by_a_recipe_error_does_not_block_the_next(tmp_path):
    # begin() creates the empty folders; with no files in them a new run may start without --overwrite.
    recipe = load_recipe(None, {"output_dir": str(tmp_path)})
    stage.begin(recipe, "grpo", resume=False, overwrite=False)
    assert stage.begin(recipe, "grpo", resume=False, overwrite=False)[1] is None


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_a_training_step_torchs_compiler_cannot_build_is_one_line(tmp_path, tiny_model_dir, compiler_fails) -> None:
    """`sft.torch_compile` asked for where torch's compiler fails (here Inductor's own: no C++ compiler): one line at
    the first step with the way out, and `--resume` then trains as the line says."""
    from conftest import TINY_RECIPE, run_cli

    run = ["--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "sft.max_steps=2", "sft.save_steps=1"]
    done = run_cli("sft", *run, "sft.torch_compile=true")
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr[done.stderr.rindex("gsm8k-tr sft: error: "):]  # after the step's progress bar
    assert line.count("\n") == 1 and line.startswith("gsm8k-tr sft: error: sft.torch_compile: torch's compiler "
                                                     "failed on this machine (")
    assert "C++ compiler" in line and line.endswith("set sft.torch_compile=false and run again with --resume\n")
    assert "Traceback" not in done.stderr
    assert run_cli("sft", *run, "--resume").returncode == 0


@pytest.mark.parametrize(("steps_per_generation", "accumulation", "checkpoint", "warned"), [
    (2, 1, 3, True),    # two steps a rollout call, resumed after its first step (the tiny recipe: adapter 7e-5 off)
    (2, 1, 4, False),   # at a call's start
    (16, 8, 101, True),  # the real recipe's commented option: two steps a call
    (8, 8, 101, False),  # TRL's default, a call each step
])
def test_a_resume_inside_a_rollout_call_says_so(steps_per_generation, accumulation, checkpoint, warned,
                                                caplog) -> None:
    from types import SimpleNamespace

    from gsm8k_tr.train.grpo import warn_inside_a_rollout_call

    config = SimpleNamespace(steps_per_generation=steps_per_generation, num_iterations=1,
                             gradient_accumulation_steps=accumulation)
    with caplog.at_level("WARNING", logger="gsm8k_tr.train.grpo"):
        warn_inside_a_rollout_call(f"runs/x/grpo/checkpoints/checkpoint-{checkpoint}", config)
    assert ("inside a rollout call" in caplog.text) == warned
