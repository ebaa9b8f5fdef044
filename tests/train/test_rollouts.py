"""The fast rollout path gives today's answers: LoRA merged while generating, the growing KV cache (and TRL's static
one), each group's prompt prefilled once."""

from __future__ import annotations

import pytest
from conftest import needs_compiler
from test_positions import _trainer, _worst_difference

torch = pytest.importorskip("torch")


def _prompts(tokenizer) -> list[list[int]]:
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt

    rows = synth.make_problems(24, seed=11)  # prompts of different lengths: a left-padded batch
    return [tokenizer(build_prompt(r["question"], PromptConfig()), add_special_tokens=False)["input_ids"] for r in rows]


def _greedy(trainer, prompts, merge: bool, cache: str | None, decoding: str = "auto",
            mixed_precision: str = "no") -> list[list[int]]:
    from gsm8k_tr import placement

    trainer.rollouts = placement.rollout_path(sharded=not merge, vllm=False, cache_implementation=cache,
                                              decoding_request=decoding, mixed_precision=mixed_precision)
    if cache == "dynamic":  # transformers' own cache: nothing handed to generate
        trainer.rollouts["kv_cache"] = "dynamic"
    trainer.generation_config.do_sample = False
    trainer.generation_config.max_new_tokens = 24
    trainer.generation_config.cache_implementation = None if cache == "dynamic" else cache
    completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    return completions


def test_fast_rollouts_give_todays_greedy_tokens(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from gsm8k_tr.infer import kv_cache
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    today = _greedy(trainer, prompts, merge=False, cache="dynamic")
    assert _greedy(trainer, prompts, merge=True, cache="dynamic") == today
    caches = []  # the growing cache is really the one generate runs with

    class Counted(kv_cache.GrowingCache):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            caches.append(self)

    monkeypatch.setattr(kv_cache, "GrowingCache", Counted)
    assert _greedy(trainer, prompts, merge=True, cache=None) == today
    assert _greedy(trainer, prompts, merge=False, cache=None) == today
    assert len(caches) == 2 and caches[0].get_seq_length() > 0
    assert "generate" not in vars(trainer.accelerator.unwrap_model(trainer.model))  # the shadowing is undone
    assert _greedy(trainer, prompts, merge=True, cache="static") == today
    # A group's prompt repeated as TRL repeats it: prefilled once, the same tokens.
    from gsm8k_tr.infer import shared_prefill

    shared = []
    real = shared_prefill.prefill
    monkeypatch.setattr(shared_prefill, "prefill", lambda *args: shared.append(real(*args)) or shared[-1])
    grouped = [p for p in prompts[:6] for _ in range(4)]
    reference = _greedy(trainer, grouped, merge=False, cache="dynamic")
    assert _greedy(trainer, grouped, merge=True, cache=None) == reference
    assert shared == [True] and reference[0] == reference[3]
    from gsm8k_tr.infer import grouped_attention  # on a CPU each group kept its prompt once, as TRL's rows come

    assert grouped_attention.holds_groups(caches[-1]) and caches[-1].layers[0].prefix_keys.shape[0] == 6
    assert len({len(p) for p in prompts}) > 5 and any(len(c) > 10 for c in today)
    # The adapter is unmerged again after each call, and scoring still gives batched rows their own positions.
    assert not trainer.model.base_model.model.transformer.h[0].attn.c_attn.merged
    assert _worst_difference(trainer) < 1e-4


@needs_compiler
def test_compiled_rollouts_give_todays_greedy_tokens(tiny_model_dir, tmp_path, compiled_calls, monkeypatch) -> None:
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    today = _greedy(trainer, prompts, merge=False, cache="dynamic")
    model = trainer.accelerator.unwrap_model(trainer.model)
    seen = []
    real = type(model).generate
    monkeypatch.setattr(type(model), "generate", lambda self, **kw: seen.append(
        (kw["input_ids"].shape[1], kw["generation_config"].cache_implementation, trainer.pad_to_multiple_of))
        or real(self, **kw))
    own_config, own_multiple = trainer.generation_config, trainer.pad_to_multiple_of
    assert _greedy(trainer, prompts, merge=True, cache=None, decoding="compiled") == today
    assert seen and all(length % PROMPT_MULTIPLE == 0 and cache == "static" for length, cache, _ in seen)
    assert len(compiled_calls) == 23  # 24 new tokens: the prefill, then 23 compiled decoding steps
    # TRL's own config (compiling off) and padding are back for everything after the rollouts.
    assert trainer.generation_config is own_config and own_config.disable_compile
    assert trainer.pad_to_multiple_of == own_multiple
    assert not trainer.model.base_model.model.transformer.h[0].attn.c_attn.merged
    # Each new shape compiled, past torch's limit (1 here; 8 by default, then new shapes run eager).
    from torch._dynamo.utils import counters

    with torch._dynamo.config.patch(recompile_limit=1):
        graphs = counters["stats"]["unique_graphs"]
        trainer.generation_config.max_new_tokens = 7  # shapes no other test compiles
        for count in (3, 5):
            trainer._generate_single_turn(prompts[:count], None, {}, 1)
        assert counters["stats"]["unique_graphs"] == graphs + 2


@needs_compiler
def test_compiled_step_rollouts_give_todays_greedy_tokens(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from gsm8k_tr.infer import compiled_step
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    today = _greedy(trainer, prompts, merge=False, cache="dynamic")
    model = trainer.accelerator.unwrap_model(trainer.model)
    steps, widths = [], []
    real_step, real_decode = compiled_step._compiled_step, compiled_step._decode
    monkeypatch.setattr(compiled_step, "_compiled_step",
                        lambda device: lambda *a: steps.append(1) or real_step(device)(*a))
    monkeypatch.setattr(compiled_step, "_decode",
                        lambda m, ids, *a: widths.append(ids.shape[1]) or real_decode(m, ids, *a))
    own_multiple = trainer.pad_to_multiple_of
    assert _greedy(trainer, prompts, merge=True, cache=None, decoding="compiled-step") == today
    assert widths and all(width % PROMPT_MULTIPLE == 0 for width in widths) and 0 < len(steps) <= 23
    # A group's prompt repeated as TRL repeats it: kept once in the static cache, the same tokens.
    grouped = [p for p in prompts[:6] for _ in range(4)]
    reference = _greedy(trainer, grouped, merge=False, cache="dynamic")
    assert _greedy(trainer, grouped, merge=True, cache=None, decoding="compiled-step") == reference
    assert model.__dict__["_gsm8k_tr_step_buffers"].groups == 6
    # TRL's padding, the model's own generate and the unmerged adapter are back after the rollouts.
    assert trainer.pad_to_multiple_of == own_multiple and "generate" not in vars(model)
    assert not trainer.model.base_model.model.transformer.h[0].attn.c_attn.merged


def test_rollouts_run_in_the_trainers_mixed_precision(tiny_model_dir, tmp_path) -> None:
    # accelerate autocasts the prepared model's forward, but PEFT's generate calls the base model's own forward, so
    # TRL's rollouts ran in float32 under bf16 training (on a GPU: float32 matmuls).
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer, bf16=True)
    assert str(trainer.accelerator.mixed_precision) == "bf16"
    model = trainer.accelerator.unwrap_model(trainer.model)
    layer = model.base_model.model.transformer.h[0].mlp.c_fc.base_layer
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append((o.dtype, m.weight.dtype)))
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    prompts = _prompts(trainer.processing_class)[:8]
    runs = {}
    for label, merge, cache, precision in (("unmerged, autocast only", False, "dynamic", "no"),
                                           ("merged, autocast only", True, None, "no"),
                                           ("merged, bf16 weights", True, None, "bf16")):
        seen.clear()
        runs[label] = _greedy(trainer, prompts, merge=merge, cache=cache, mixed_precision=precision)
        assert seen and {out for out, _ in seen} == {torch.bfloat16}, label  # the matmuls ran in bf16
        assert {weight for _, weight in seen} == {torch.bfloat16 if precision == "bf16" else torch.float32}, label
    # The bf16 copies are the values autocast makes of the float32 weights: the same tokens.
    assert runs["merged, bf16 weights"] == runs["merged, autocast only"]
    assert trainer.rollouts["weights_dtype"] == "bfloat16"
    # The held-out check does the same on the training model.
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data import synth
    from gsm8k_tr.train.held_out import HeldOutCheck

    seen.clear()
    recipe = load_recipe(None, ["eval.max_new_tokens=8", "eval.batch_size=4"])
    rows = [{"question": r["question"], "answer": r["gold"]} for r in synth.make_problems(4, seed=2)]
    result = HeldOutCheck(trainer, rows, recipe, merge=True).measure()
    assert 0 <= result["accuracy"] <= 1 and {weight for _, weight in seen} == {torch.bfloat16}
    # The float32 weights are back, the same tensors; the merges leave them within a rounding step.
    for name, param in model.named_parameters():
        kept, values = before[name]
        assert param is kept and param.dtype == values.dtype == torch.float32
        assert torch.allclose(param, values, atol=1e-6, rtol=0), name


def test_the_compute_dtype_copies_keep_their_address_and_follow_the_weights(tiny_model_dir) -> None:
    """CUDA graphs record each weight's address: the copies are refreshed in place at every call, not made anew,
    from the weights as they are then, whether the caller is in inference mode or not."""
    from transformers import AutoModelForCausalLM

    from gsm8k_tr.train.rollouts import matmul_weights_in

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False).requires_grad_(False)
    layer = model.transformer.h[0].mlp.c_fc
    own = layer.weight.data
    seen = []
    for mode in (torch.no_grad, torch.inference_mode, torch.no_grad):
        expected = own.to(torch.bfloat16)
        with mode(), matmul_weights_in(model, "bfloat16"):
            seen.append(layer.weight.data_ptr())
            assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight.detach(), expected)
        assert layer.weight.data_ptr() == own.data_ptr() and layer.weight.dtype == torch.float32
        own.add_(1.0)  # as a training step or a merged adapter changes the weights between calls
    assert len(set(seen)) == 1 and seen[0] != own.data_ptr()


def test_merging_for_each_rollout_leaves_the_weights_where_they_were(tiny_model_dir, tmp_path) -> None:
    from gsm8k_tr.train.grpo import GRPOTrainer
    from gsm8k_tr.train.rollouts import merged_adapter

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    model = trainer.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(300):  # more rollouts than a demo run has steps
        with merged_adapter(model):
            pass
    drift = max((p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters())
    assert drift < 1e-6
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters() if "lora_" in name)
    with pytest.raises(RuntimeError), merged_adapter(model):
        raise RuntimeError("a failed generation")
    assert not any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))


def test_rollouts_run_with_the_attention_kernels_of_their_path(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """Eager rollouts on CUDA leave cuDNN's attention out (`placement.decoding_attention`); the trainer enters
    that choice around TRL's generate call, and the tokens do not change."""
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    from gsm8k_tr import placement
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    model = trainer.accelerator.unwrap_model(trainer.model)
    seen, real_generate = [], type(model).generate
    monkeypatch.setattr(type(model), "generate",
                        lambda self, *a, **kw: seen.append(_cur_sdpa_kernel_backends()) or real_generate(self, *a, **kw))
    plain = _greedy(trainer, prompts, merge=True, cache=None)
    monkeypatch.setattr(placement, "decoding_attention", lambda device, how: ["MATH"])  # as for CUDA, eager
    limited = _greedy(trainer, prompts, merge=True, cache=None)
    assert trainer.rollouts["attention"] == ["MATH"] and seen[-1] == [SDPBackend.MATH] != seen[0]
    assert limited == plain


def test_rollouts_defer_the_stop_check_where_their_path_says(tiny_model_dir, tmp_path, deferred_stop_checks) -> None:
    """On a GPU the rollouts' `generate` reads its stop flag a step late (`placement.stop_check`, here made to say
    so on the CPU); the trainer enters that around TRL's generate call, and the tokens do not change."""
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    late = _greedy(trainer, prompts, merge=True, cache=None)
    assert trainer.rollouts["stop_check"] == "deferred" and len(deferred_stop_checks) == 1
    each = _greedy(trainer, prompts, merge=False, cache=None)  # sharded: every step
    assert trainer.rollouts["stop_check"] == "every step" and len(deferred_stop_checks) == 1
    assert late == each


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_rollouts_decode_eager_where_compiling_fails(tiny_model_dir, tmp_path, compiler_fails, monkeypatch) -> None:
    """Under `decoding: auto` a compile that fails on this machine costs one batch tried again eager, the tokens
    unchanged, activation checkpointing (which TRL leaves off when generate raises) back on, the manifest's path
    eager; a compiled decoding the recipe asked for is one line."""
    from gsm8k_tr import placement
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.train.grpo import GRPOTrainer
    from gsm8k_tr.train.rollouts import activation_checkpointing, turn_on_activation_checkpointing

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    prompts = _prompts(trainer.processing_class)
    today = _greedy(trainer, prompts, merge=False, cache="dynamic")
    monkeypatch.setattr(placement, "auto_compiles", lambda device: True)  # as on a CUDA GPU with Triton
    trainer.plan_rollouts = lambda: placement.rollout_path(False, False, None, "cpu", trainer.decoding_request)
    trainer.rollouts = trainer.plan_rollouts()
    assert trainer.rollouts["decoding"] == "compiled"
    model = trainer.accelerator.unwrap_model(trainer.model)
    turn_on_activation_checkpointing(model, None)
    trainer.generation_config.do_sample = False
    trainer.generation_config.max_new_tokens = 24
    completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    assert completions == today and activation_checkpointing(model)
    assert trainer.rollouts["decoding"] == "eager" and trainer.rollouts["kv_cache"] == "growing"
    assert "C++ compiler" in trainer.rollouts["compile_failed"]
    assert not trainer.model.base_model.model.transformer.h[0].attn.c_attn.merged
    for asked in ("compiled", "compiled-step"):
        trainer.decoding_request = asked
        trainer.rollouts = trainer.plan_rollouts()
        with pytest.raises(UserError, match=f"decoding: {asked} failed to compile on this machine"):
            trainer._generate_single_turn(prompts, None, {}, 1)


def test_several_steps_of_rollouts_come_from_one_call_through_the_fast_path(tiny_model_dir, tmp_path,
                                                                             monkeypatch) -> None:
    """TRL's `steps_per_generation` (`benchmarks/steps_per_generation.py`, the rollouts' lever on a GPU) reaches the
    project's rollout path: 4 optimizer steps of 2 micro-batches of 4 completions, generated 16 at a time at steps
    0 and 2 instead of 8 at every step."""
    from conftest import TINY_RECIPE, run_cli

    from gsm8k_tr.train.rollouts import FastRollouts

    calls = []
    real = FastRollouts._generate_single_turn

    def counted(self, prompts, *args, **kwargs):
        calls.append((self.state.global_step, len(prompts)))
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(FastRollouts, "_generate_single_turn", counted)
    common = ["model.sft_output=none", "eval.every_steps=0", "grpo.gradient_accumulation_steps=2", "grpo.save_steps=4"]
    for name, extra, expected in (("default", [], [(0, 8), (1, 8), (2, 8), (3, 8)]),
                                  ("reused", ["grpo.steps_per_generation=4"], [(0, 16), (2, 16)])):
        calls.clear()
        done = run_cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / name}", *common, *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert calls == expected, name


def test_a_batch_of_one_group_rolls_out_without_the_padding_warning(tiny_model_dir, tmp_path, caplog) -> None:
    """TRL repeats a group's prompt, so a batch of one group has no padding and transformers' `generate` drops its
    mask; once a token equal to the pad id comes back as input, GPT-2 warns that the input may be padded. TRL's own
    trainer shows that false warning; this one does not, and its tokens are the same."""
    import logging

    from trl import GRPOTrainer as PlainTrainer

    from gsm8k_tr.train.grpo import GRPOTrainer

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root, where caplog listens
    warned, tokens = [], []
    try:
        for trainer_cls in (PlainTrainer, GRPOTrainer):
            trainer = _trainer(tiny_model_dir, tmp_path, trainer_cls)
            group = _prompts(trainer.processing_class)[:1] * 4
            trainer.generation_config.do_sample = False
            trainer.generation_config.max_new_tokens = 24
            completions, _ = trainer._generate_single_turn(group, None, {}, 1)
            # A finished row is fed the pad id; as its stand-in, the pad id here is a token the rows emit and feed
            # back (the model's config is what GPT-2's check reads; the generation config still pads with the old).
            trainer.accelerator.unwrap_model(trainer.model).config.pad_token_id = completions[0][1]
            caplog.clear()
            logging.Logger.warning_once.cache_clear()  # transformers logs it once per process
            completions, _ = trainer._generate_single_turn(group, None, {}, 1)
            warned.append(any(r.getMessage().startswith("We strongly recommend passing in an `attention_mask`")
                              for r in caplog.records))
            tokens.append(completions)
            assert "generate" not in vars(trainer.accelerator.unwrap_model(trainer.model))  # the shadowing is undone
    finally:
        logger.removeHandler(caplog.handler)
        logging.Logger.warning_once.cache_clear()
    assert warned == [True, False]
    assert tokens[0] == tokens[1] and len(tokens[0][0]) > 2


def test_continuous_batching_rollouts_leave_the_adapter_in_float32(tiny_model_dir, tmp_path) -> None:
    # TRL's continuous-batching rollouts cast the whole model to bf16 under bf16 training and leave it so: the adapter
    # would train in bf16 from then on. Through the trainer's own rollouts every weight is back in float32, the
    # adapter's values exact, and the path is recorded as that engine's.
    import trl

    from gsm8k_tr import placement
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer, bf16=True, use_transformers_continuous_batching=True)
    trainer.rollouts = placement.rollout_path(False, False, continuous_batching=True)
    assert trainer.rollouts["decoding"] == "continuous-batching" and not trainer.rollouts["merge_lora"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prompts = _prompts(trainer.processing_class)[:4]
    trl.GRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)  # TRL's own, as it is
    assert all(p.dtype == torch.bfloat16 for _, p in model.named_parameters())
    for name, param in model.named_parameters():  # back to the start, as a fresh trainer would be
        param.data = before[name].clone()
    completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    assert len(completions) == 4 and all(completions)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        if param.requires_grad:
            assert torch.equal(param, before[name]), name
        else:  # rounded once to bf16, as autocast's matmuls read them
            assert torch.allclose(param, before[name], rtol=2 ** -8, atol=0), name
    assert any("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_the_kept_dtypes_bring_back_floating_buffers_exactly() -> None:
    # A Llama's rotary frequencies are a float32 buffer: rounded to bf16 they would move every position's angle.
    from gsm8k_tr.train.rollouts import dtypes_kept

    layer = torch.nn.Linear(3, 3)
    layer.register_buffer("inv_freq", torch.tensor([1 / 3, 1 / 7, 1 / 11]))
    layer.weight.requires_grad_(False)
    buffer, bias, weight = layer.inv_freq.clone(), layer.bias.detach().clone(), layer.weight.detach().clone()
    with dtypes_kept(layer):
        layer.to(torch.bfloat16)
    assert layer.inv_freq.dtype == layer.bias.dtype == layer.weight.dtype == torch.float32
    assert torch.equal(layer.inv_freq, buffer) and torch.equal(layer.bias, bias)  # exact: a buffer, a trained one
    assert torch.allclose(layer.weight, weight, rtol=2 ** -8, atol=0)  # frozen: rounded once
