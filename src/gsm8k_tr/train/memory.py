"""The memory plan: a stage's peak accelerator memory, estimated from the model's config and the recipe.

Nothing is loaded but `config.json`. The estimate is a sum of parts, each a
count of what the stage keeps in memory at its peak:

- weights: every parameter, in the dtype training loads it in (float32: the
  trainer's autocast supplies bf16/fp16, and mixed precision needs fp32
  master weights);
- lora: the LoRA parameters with their gradients and AdamW's two moments, on
  the layers `lora.target_modules` names (every linear layer by default);
- activations: what one micro-batch at the recipe's longest sequences keeps
  for the backward pass, with activation checkpointing on or off
  (`activations_checkpointed` is the other setting, for comparison), the
  inputs the adapted layers keep, and LoRA's dropout masks when its dropout
  is on;
- weight_casts: under mixed precision on a GPU, autocast's copy of every
  matmul weight in the compute dtype (the frozen ones and LoRA's), which each
  layer keeps for its backward pass (on a CPU training is counted in float32,
  which its bf16 peaks matched);
- logits: what the loss needs. TRL 1.16 scores SFT and GRPO alike through a
  fused LM head (`trl.trainer.utils.add_fused_lm_head`) that never holds the
  `(batch, length, vocabulary)` logits: it projects tiles of 4,096 tokens by
  up to 32,768 vocabulary entries at a time;
- kv_cache: GRPO's rollouts (all completions of one optimizer step are
  generated together) and the in-training held-out check keep keys and values
  for every layer, token and sequence, each group's prompt once where the
  rollouts keep it so (`groups_prompts`); with compiled decoding the static
  cache also holds the prompts' extra padding (`infer/compiled_decoding.py`);
- rollout_weights: under mixed precision, GRPO's rollouts use a copy of the
  frozen matmul weights in the compute dtype (`train/rollouts.py`);
- runtime: the CUDA context and the allocator's slack on a GPU (0.6 GiB, not
  yet measured on one); PyTorch's own first-use buffers on a CPU (25 MiB,
  measured).

The peak is weights + lora + runtime + what GRPO keeps between rollouts +
the larger of the training phase (activations, weight casts and logits) and
the generation phase (the KV cache unless it is kept, the last token's
logits). Kept between rollouts, so also while training: the rollouts' weight
copies, and with compiled decoding the static KV cache (transformers keeps
the longest built so far on the model, `infer/compiled_step.py` its
buffers), so that CUDA graphs find them where they recorded them. A recipe
fits when the peak is at most 95% of the memory.

The per-token activation counts below were fitted to CPU measurements of the GPT-2 Medium and SmolLM2 shapes
(resident memory over a baseline; `benchmarks/memory_plan.py`) and checked on the tiny and demo shapes; on a CPU,
PyTorch's math attention also keeps the attention probabilities, which GPUs' fused kernels do not. For a GPU in
bf16 the same script counts what autograd saves under autocast with CUDA's dropout (`--saved`): the plan's
activations are 2-4% over that count for GPT-2 Medium, within 2% of it for SmolLM2, Qwen2.5-0.5B, Pythia-410M,
OPT-350M and GPT-Neo-125M (0-6% with LoRA on some layers only), its weight casts 1% over (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gsm8k_tr import modeling, placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE
from gsm8k_tr.train.lora_layers import adapted, kept_inputs

GIB = 2**30
FITS_SHARE = 0.95  # leave the allocator some room
CUDA_RUNTIME_GIB = 0.6  # CUDA context, cuBLAS workspaces and allocator slack (not yet measured on a GPU)
CPU_RUNTIME_GIB = 25 / 1024  # PyTorch's own first-use buffers on a CPU (thread pools, kernel caches): measured
TOKEN_TILE, VOCAB_TILE = 4096, 32768  # TRL's chunked log-prob kernel
# The longest prompts and examples planned for. A GSM8K-TR prompt (instruction and question) takes up to about 450
# tokens with an English tokenizer (SmolLM2, measured on the shared sample) and fewer with a Turkish one; a whole
# SFT example with its solution, about 1,000. A recipe's own max_length or the model's context, when shorter, wins.
PROMPT_TOKENS = 512
EXAMPLE_TOKENS = 1024
# Values kept for backward per token and layer, in hidden sizes and MLP widths, by family and autocast, with LoRA on
# every linear layer (rank-wide values and `lora_layers.kept_inputs` aside): float32 fitted to CPU resident memory;
# bf16 autocast counted by `benchmarks/memory_plan.py --saved`, Llama's on SmolLM2 and Qwen2.5-0.5B, GPT-NeoX's, OPT's
# and GPT-Neo's on Pythia-410M, OPT-350M and GPT-Neo-125M (their float32 ones are Llama's or GPT-2's, not measured).
ACTIVATION = {("gpt2", False): (12.0, 5.0), ("gpt2", True): (12.0, 5.0), ("llama", False): (10.0, 5.0),
              ("llama", True): (11.4, 4.0), ("gpt_neox", True): (9.3, 2.0), ("opt", True): (10.8, 2.0),
              ("gpt_neo", False): (12.0, 5.0), ("gpt_neo", True): (7.05, 5.0)}
FAMILY = {"gpt2": "gpt2", "gpt_neo": "gpt_neo", "gptj": "gpt2", "gpt_neox": "gpt_neox", "opt": "opt"}  # else llama
FUSED_QKV = ("qkv_proj", "query_key_value", "Wqkv", "c_attn")  # one linear layer for q, k and v
# Dropout masks per token and layer, in hidden sizes: a byte each on a GPU, the noise in the compute dtype on a CPU.
DROPOUT_MASKS_H = 3.0
# LoRA's dropout, per value of each adapted layer's input and token. Without it the adapter's first matmul keeps its
# input (the frozen layer beside it keeps none); with it, the dropped input and dropout's mask. Under autocast on a GPU
# the adapter keeps a bf16 cast either way (PEFT casts to its float32 weights first): the mask adds a byte. On a CPU in
# float32 the mask is float noise and the dropped input a new tensor per adapted layer, replacing an input kept once
# per distinct input (Llama's q, k and v share theirs). Counted (`memory_plan.py --saved`; resident memory on a CPU):
# 1.0 byte a value on a GPU for GPT-2 Medium and SmolLM2; on a CPU 4.5 and 5.8 against the 4.0 and 5.4 given here.
LORA_DROPOUT_BYTES = {"gpu": 1.0, "cpu": 8.0}
LORA_DROPOUT_REPLACED_CPU = 4.0  # float32 bytes per value of each distinct input


@dataclass
class Shape:
    """What the estimate needs to know about a model, read from its config."""

    family: str  # the block layout the activation counts assume (`FAMILY`): "gpt2", "llama", "gpt_neox", ...
    layers: int
    hidden: int
    heads: int
    kv_dim: int  # keys (and values) per token and layer: heads x head size, fewer with grouped-query attention
    mlp: int
    vocab: int
    context: int
    parameters: int
    linears: list[tuple[str, int, int]] = field(default_factory=list)  # (name, in, out): every linear but the head
    dropout: bool = True  # the model's own dropout (GPT-2's is 0.1; Llama's is 0) runs during SFT
    model_type: str = ""  # the config's
    fused_attention: bool = True  # SDPA or flash attention, as transformers loads it: no probabilities kept
    prompts_once: bool = False  # rollouts can keep a group's prompt once (`grouped_attention.config_supports`)
    static_cache: bool = True  # decodes compiled where asked (`modeling.runs_on_static_cache`; GPT-Neo does not)

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        """Read a Hugging Face config; parameters are counted on a model with no storage (the meta device)."""
        import torch
        from transformers.pytorch_utils import Conv1D

        from gsm8k_tr.infer import grouped_attention

        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        family = FAMILY.get(text.model_type, "llama")
        hidden = getattr(text, "hidden_size", None) or text.n_embd
        heads = getattr(text, "num_attention_heads", None) or text.n_head
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        mlp = next((v for key in ("intermediate_size", "n_inner", "ffn_dim") if (v := getattr(text, key, None))),
                   4 * hidden)  # OPT's is ffn_dim
        context = next(v for k in ("n_positions", "max_position_embeddings", "n_ctx") if (v := getattr(text, k, None)))
        model = modeling.meta_model(config)
        head = model.get_output_embeddings()
        linears = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                linears.append((name, module.in_features, module.out_features))
            elif isinstance(module, Conv1D):
                linears.append((name, *module.weight.shape))
        dropout = any((getattr(text, key, 0.0) or 0.0) > 0 for key in ("resid_pdrop", "attn_pdrop", "embd_pdrop",
                                                                      "attention_dropout", "hidden_dropout", "dropout"))
        return cls(family, getattr(text, "num_hidden_layers", None) or text.n_layer, hidden, heads,
                   kv_heads * head_dim, mlp, text.vocab_size, context, sum(p.numel() for p in model.parameters()),
                   linears, dropout, text.model_type, model.config._attn_implementation != "eager",
                   grouped_attention.config_supports(config), modeling.runs_on_static_cache(model))


@dataclass
class StagePlan:
    """One stage's estimate, in GiB per part."""

    stage: str
    parts: dict[str, float]
    peak_gib: float
    memory_gib: float | None
    fits: bool | None
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"peak_gib": round(self.peak_gib, 2), "fits": self.fits,
                "parts": {k: round(v, 3) for k, v in self.parts.items()}, "settings": self.settings}


def _activations(shape: Shape, batch: int, length: int, compute_bytes: int, dropout: bool, checkpointing: bool,
                 lora_rank: int, attention_weights: bool, lora_dropout: bool = False, adapters: Any = None) -> float:
    """Bytes one micro-batch of `batch` sequences of `length` tokens keeps for the backward pass.

    `attention_weights`: the attention probabilities are kept too (heads x length per token), as PyTorch's math
    attention does on a CPU, where dropout also keeps its noise at full width; the fused attention kernels GPUs use
    keep none, dropout included, and a GPU's dropout masks are bytes. `lora_dropout`: LoRA's dropout is on, and
    keeps a mask of every adapted layer's input. `adapters`: the linear layers LoRA adapts (default: all); the
    fitted counts are for LoRA on every one, so the inputs those keep are swapped for what `adapters` keep.
    """
    adapters = shape.linears if adapters is None else adapters
    autocast = compute_bytes < 4
    per_h, per_i = ACTIVATION.get((shape.family, autocast), ACTIVATION["llama", autocast])
    # Attention keeps the values, a view of a fused q, k, v output, so all of it (Phi-3); GPT-2's fit includes c_attn.
    fused = max((out - shape.kv_dim for name, _, out in shape.linears if name.rsplit(".", 1)[-1] in FUSED_QKV
                 and shape.family != "gpt2"), default=0)
    floats = (per_h * shape.hidden + per_i * shape.mlp + fused + (lora_rank * len(adapters) + kept_inputs(
        adapters, autocast) - kept_inputs(shape.linears, per_layer_copy=False)) / shape.layers)
    if attention_weights:
        floats += shape.heads * length * (3 if dropout else 1)  # the probabilities, their noise and dropped copy
    elif not shape.fused_attention:  # eager attention on a GPU keeps float32 probabilities, and a byte mask
        floats += shape.heads * length * (4 + dropout) / compute_bytes  # (GPT-Neo has no SDPA)
    mask_bytes = 1 if not attention_weights else compute_bytes
    per_layer = floats * compute_bytes + (DROPOUT_MASKS_H * shape.hidden * mask_bytes if dropout else 0.0)
    if lora_dropout:
        inputs = kept_inputs(adapters, per_layer_copy=True) / shape.layers  # adapted layers' input values per token
        added = inputs * LORA_DROPOUT_BYTES["cpu" if attention_weights else "gpu"]
        if attention_weights:  # never below nothing, whatever an unusual block's layout
            replaced = kept_inputs(adapters, per_layer_copy=False) / shape.layers
            added = max(0.0, added - replaced * LORA_DROPOUT_REPLACED_CPU)
        per_layer += added
    tokens = batch * length
    if checkpointing:  # each block keeps its input; one block at a time is recomputed in full
        return tokens * (shape.layers * shape.hidden * compute_bytes + per_layer)
    return tokens * shape.layers * per_layer


def estimate(shape: Shape, stage: str, settings: dict[str, Any], on_gpu: bool,
             memory_gib: float | None = None) -> StagePlan:
    """The peak memory of `stage` (sft or grpo) with `settings` (see `stage_settings`)."""
    s = settings
    compute = 2 if s["mixed_precision"] else 4
    # A CPU's training under bf16 autocast peaked where the float32 count does (`memory_plan.py --cpu-bf16`: GPT-2
    # Medium's SFT 4,312 MiB against 4,307 in float32; counted in bf16 the plan was 0.84-0.97 of the peaks): it keeps
    # the casts and float32 transients beside bf16 activations. So a CPU's training is counted in float32 whatever
    # the precision; what generation keeps (KV cache, weight copies) in the compute dtype.
    train_compute = compute if on_gpu else 4
    adapters = adapted(shape.linears, s.get("lora_targets"))
    lora = s["lora_rank"] * sum(i + o for _, i, o in adapters)
    parts = {"weights": shape.parameters * 4, "lora": lora * 16}
    tokens = s["micro_batch"] * s["length"]
    kept = (s["micro_batch"], s["length"], train_compute, s["dropout"] and shape.dropout)
    lora_dropout = bool(s.get("lora_dropout", False))
    active = _activations(shape, *kept, s["checkpointing"], s["lora_rank"], not on_gpu, lora_dropout, adapters)
    other = _activations(shape, *kept, not s["checkpointing"], s["lora_rank"], not on_gpu, lora_dropout, adapters)
    parts["activations"] = active
    parts["activations_" + ("not_checkpointed" if s["checkpointing"] else "checkpointed")] = other
    matmul_weights = sum(i * o for _, i, o in shape.linears)  # autocast casts the frozen ones too
    parts["weight_casts"] = (matmul_weights + lora) * compute if s["mixed_precision"] and on_gpu else 0.0
    # One tile of the fused LM head's projection in the compute dtype and its float32 statistics. TRL allocates the
    # tile VOCAB_TILE wide whatever the vocabulary; a CPU's resident memory holds only the part it writes.
    width = VOCAB_TILE if on_gpu else min(shape.vocab, VOCAB_TILE)
    parts["logits"] = min(tokens, TOKEN_TILE) * width * (train_compute + 4)
    generation = kept_between = 0.0
    if stage == "sft":
        parts["kv_cache"] = 0.0
    else:
        how = rollout_decoding(shape, s, on_gpu)
        padding, rows = s.get("cache_padding", 0) if how != "eager" else 0, s["generation_batch"]
        cached = rows * (s["length"] + padding)
        if groups_prompts(shape, s, on_gpu, how):  # each group's prompt once, each row's own tokens after it
            prompt = min(s["prompt_length"], s["length"])
            cached = rows // s["num_generations"] * (prompt + padding) + rows * (s["length"] - prompt)
        rollouts = kv_cache_bytes(shape, cached, compute)
        held_out = kv_cache_bytes(shape, s["eval_batch"] * (s["eval_length"] + padding), compute)
        parts["kv_cache"] = 0.0 if s["vllm"] else max(rollouts, held_out)
        copied = s["mixed_precision"] and not s["vllm"]
        parts["rollout_weights"] = matmul_weights * compute if copied else 0.0
        cache_kept = how in placement.COMPILED_DECODINGS and not s["vllm"]
        kept_between = parts["rollout_weights"] + (parts["kv_cache"] if cache_kept else 0.0)
        generation = (0.0 if cache_kept else parts["kv_cache"]) + s["generation_batch"] * shape.vocab * 4
    parts["runtime"] = (CUDA_RUNTIME_GIB if on_gpu else CPU_RUNTIME_GIB) * GIB
    training = active + parts["weight_casts"] + parts["logits"]
    peak = parts["weights"] + parts["lora"] + parts["runtime"] + kept_between + max(training, generation)
    if s["vllm"] and memory_gib:
        parts["vllm"] = s["vllm_share"] * memory_gib * GIB  # vLLM takes its share of the GPU up front
        peak += parts["vllm"]
    gib = {k: v / GIB for k, v in parts.items()}
    fits = None if memory_gib is None else peak / GIB <= FITS_SHARE * memory_gib
    return StagePlan(stage, gib, peak / GIB, memory_gib, fits, dict(settings))


def rollout_decoding(shape: Shape, settings: dict[str, Any], on_gpu: bool) -> str:
    """How GRPO's rollouts decode (`placement.decoding`; the plan assumes Triton on a GPU). Compiled decoding keeps
    its static KV cache between calls."""
    return placement.decoding_rule(settings.get("decoding", "auto"), on_gpu, static_cache=shape.static_cache)


def groups_prompts(shape: Shape, settings: dict[str, Any], on_gpu: bool, how: str) -> bool:
    """Whether GRPO's rollouts, decoding `how`, keep each group's prompt once in their KV cache
    (`placement.rollout_path`)."""
    if settings.get("num_generations", 1) < 2 or "prompt_length" not in settings or settings["vllm"]:
        return False
    cache = placement.kv_cache(settings.get("cache_implementation"))
    return shape.prompts_once and placement.grouped_attention("cuda" if on_gpu else "cpu", how, cache)


def kv_cache_bytes(shape: Shape, tokens: float, dtype_bytes: int) -> float:
    """The keys and values of every layer for `tokens` cached tokens (rows x positions)."""
    return 2 * shape.layers * shape.kv_dim * dtype_bytes * tokens


def stage_settings(recipe: Recipe, stage: str, config: Any, context: int,
                   longest: int | None = None) -> dict[str, Any]:
    """What the estimate reads from a stage's TRL config: batch sizes, lengths, precision, checkpointing.

    `longest`: the data's longest SFT example or GRPO prompt in tokens, when known; otherwise the plan
    assumes the longest the recipe allows.
    """
    micro = config.per_device_train_batch_size
    multiple = padding_multiple(config)
    if stage == "sft":  # batches pad to their longest example (then to the multiple): at worst max_length
        length = padded(min(config.max_length or context, context, longest or EXAMPLE_TOKENS), multiple)
        generation_batch = eval_batch = eval_length = 0
        extra = {}
    else:  # prompts are left-padded to the longest one, completions run to their limit; each to the multiple
        completion = config.max_completion_length  # the stage drops prompts that leave it no room (grpo_examples)
        prompt = min(longest or PROMPT_TOKENS, max(context - completion, 1))
        length = padded(prompt, multiple) + padded(completion, multiple)
        steps = getattr(config, "steps_per_generation", None) or config.gradient_accumulation_steps
        generation_batch = getattr(config, "generation_batch_size", None) or micro * steps
        eval_batch = recipe.eval.batch_size if recipe.eval.every_steps else 0
        eval_length = min(context, PROMPT_TOKENS + recipe.eval.max_new_tokens) if eval_batch else 0
        extra = {"prompt_length": padded(prompt, multiple), "num_generations": config.num_generations,
                 "cache_implementation": getattr(config, "cache_implementation", None)}
    # GRPO turns the model's dropout off, and LoRA's with it (`train/grpo.py`), unless `disable_dropout` is off
    dropout = stage == "sft" or not getattr(config, "disable_dropout", True)
    return {
        "micro_batch": micro, "gradient_accumulation_steps": config.gradient_accumulation_steps, "length": length,
        "mixed_precision": bool(config.bf16 or config.fp16),
        "checkpointing": bool(getattr(config, "activation_checkpointing", None)  # transformers 5.23's name
                              or getattr(config, "gradient_checkpointing", False)),
        "dropout": dropout,
        "lora_rank": recipe.lora.r,
        "lora_targets": recipe.lora.target_modules,
        "lora_dropout": dropout and recipe.lora.dropout > 0,
        "decoding": recipe.decoding,
        "generation_batch": generation_batch,
        "eval_batch": eval_batch,
        "eval_length": eval_length,
        "vllm": bool(getattr(config, "use_vllm", False)) and getattr(config, "vllm_mode", "") == "colocate",
        "vllm_share": getattr(config, "vllm_gpu_memory_utilization", 0.0) or 0.0,
        # Compiled decoding pads prompts to a multiple of PROMPT_MULTIPLE tokens: up to one less than that more,
        # unless the stage pads them so already; `estimate` counts it where the rollouts compile (`rollout_decoding`).
        "cache_padding": PROMPT_MULTIPLE - 1 if stage == "grpo" and recipe.decoding != "eager"
        and not (multiple and multiple % PROMPT_MULTIPLE == 0) else 0,
        **extra,
    }


def padding_multiple(config: Any) -> int | None:
    """TRL's `pad_to_multiple_of` of a stage config (`placement.pad_to_multiple_of`), or None."""
    multiple = getattr(config, "pad_to_multiple_of", None)
    return multiple if isinstance(multiple, int) and multiple > 1 else None


def padded(tokens: int, multiple: int | None) -> int:
    """`tokens` rounded up to `multiple`.

    >>> padded(100, 64), padded(128, 64), padded(100, None)
    (128, 128, 100)
    """
    return -(-tokens // multiple) * multiple if multiple else tokens
