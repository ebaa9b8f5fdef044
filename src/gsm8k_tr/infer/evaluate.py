"""`gsm8k-tr evaluate`: answers for a prepared split, graded by the reward's own grader.

Linear: resolve the model (Hub id, base folder, stage output, adapter or
merged model) → prepared split → batched generation → grade each completion
with `answers.is_correct` (what the correctness reward uses, so the training
signal and the reported accuracy cannot drift) → metrics.json and
predictions.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gsm8k_tr import hub, modeling, placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.data.prompts import build_prompt
from gsm8k_tr.data.splits import load_split
from gsm8k_tr.errors import UserError, one_line, out_of_memory
from gsm8k_tr.grading.answers import extract_answer, is_correct, is_correct_flexible, shown
from gsm8k_tr.grading.rewards import soft_format_reward_func, strict_format_reward_func
from gsm8k_tr.infer import generation
from gsm8k_tr.outputs import read_object
from gsm8k_tr.run_folder import is_finished, prepared_data, read_manifest

log = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021).

    >>> pass_at_k(4, 0, 2), pass_at_k(4, 4, 2), round(pass_at_k(4, 1, 2), 4)
    (0.0, 1.0, 0.5)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_correct(completions: list[str], gold: str, answer_tag: str) -> bool:
    """Whether the most common extracted answer (ties: the earliest) is correct.

    A completion votes for the reading the grader would credit, so maj@1 equals accuracy.

    >>> majority_correct(["<cevap>4</cevap>", "<cevap>5</cevap>", "<cevap>4</cevap>"], "4", "cevap")
    True
    >>> majority_correct(["<cevap>5</cevap>", "yok", "<cevap>4</cevap>"], "4", "cevap")
    False
    """
    votes = [shown(extract_answer(text, answer_tag), gold) for text in completions]
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(v for v in votes if v is not None and counts[v] == best)
    return is_correct(f"<{answer_tag}>{winner}</{answer_tag}>", gold, answer_tag)


def grade(question: str, gold: str, completions: list[generation.Completion], recipe: Recipe) -> dict[str, Any]:
    """One prediction record: every sample graded."""
    tags = {"reasoning_tag": recipe.prompt.reasoning_tag, "answer_tag": recipe.prompt.answer_tag}
    texts = [c.text for c in completions]
    strict = strict_format_reward_func(texts, **tags)
    soft = soft_format_reward_func(texts, **tags)
    samples = [{
        "completion": c.text,
        "extracted": shown(extract_answer(c.text, tags["answer_tag"]), gold),
        "correct": is_correct(c.text, gold, tags["answer_tag"]),
        "flexible_correct": is_correct_flexible(c.text, gold),
        "strict_format": s > 0,
        "soft_format": f > 0,
        "tokens": c.tokens,
        "truncated": c.truncated,
    } for c, s, f in zip(completions, strict, soft)]
    record = {"question": question, "gold": gold, **samples[0]}
    if len(samples) > 1:
        record["samples"] = samples
        record["majority_correct"] = majority_correct(texts, gold, tags["answer_tag"])
    return record


def metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate metrics; with several samples per question, rates are over all samples."""
    samples = [s for r in records for s in r.get("samples", [r])]

    def rate(key: str) -> float:
        return sum(bool(s[key]) for s in samples) / len(samples)

    result: dict[str, Any] = {
        "n": len(records),
        "accuracy": rate("correct"),
        "flexible_accuracy": rate("flexible_correct"),
        "strict_format_rate": rate("strict_format"),
        "soft_format_rate": rate("soft_format"),
        "mean_completion_tokens": sum(s["tokens"] for s in samples) / len(samples),
        "truncated_rate": rate("truncated"),
    }
    k = len(records[0].get("samples", [records[0]]))
    if k > 1:
        result["samples"] = k
        result["pass_at_k"] = sum(pass_at_k(k, sum(s["correct"] for s in r["samples"]), k) for r in records) / len(records)
        result["maj_at_k"] = sum(r["majority_correct"] for r in records) / len(records)
    return result


def load_for_inference(spec: str, recipe: Recipe, device: str | None = None) -> tuple[Any, Any, str]:
    """Model, tokenizer and a description for `spec`: Hub id, `builtin:`, model folder, stage output or adapter.

    The model goes to the inference device (`device`, else `eval.device`, else
    CUDA, MPS or CPU) in its dtype (`eval.dtype`; auto: bf16 or fp16 on a GPU,
    float32 on CPU).
    """
    target = placement.inference_device(device or recipe.eval.device)
    dtype = placement.inference_dtype(target, recipe.eval.dtype)
    path = Path(spec).expanduser()
    stop = recipe.model.stop_token
    stage_output = is_finished(path)
    if stage_output:  # its merged model, with the stop token it was trained on
        stop = read_manifest(path).get("stop_token", stop)
        path = path / "merged"
    if spec == recipe.model.name_or_path and not stage_output:
        # The recipe's own model, with its revision or GGUF file.
        tokenizer, model = modeling.load_tokenizer(recipe.model), modeling.load_model(recipe.model, dtype=dtype)
    elif path.is_dir() and (path / "adapter_config.json").is_file():
        model, tokenizer = _load_adapter(path, recipe)
        model = model.to(dtype)
    elif path.is_dir() and modeling.is_model_folder(path):
        tokenizer = modeling.load_tokenizer(recipe.model, str(path))
        model = modeling.load_model(recipe.model, str(path), dtype=dtype)
    elif path.exists() or _path_only(spec):
        modeling.refuse_pickle(path)  # a folder with pickle weights only is told so, not that it is no model
        _no_model(spec)
    else:
        cfg = dataclasses.replace(recipe.model, name_or_path=spec, gguf_file=None, revision=None)
        tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg, dtype=dtype)
    modeling.configure_tokens(tokenizer, model, stop)
    return model.to(target), tokenizer, str(path if path.exists() else spec)


def _path_only(spec: str) -> bool:
    """Whether `spec` can only be a local folder (not a Hub id, not `builtin:NAME`)."""
    return not spec.startswith("builtin:") and hub.names_a_path(spec)


def _no_model(spec: str) -> None:
    path = Path(spec).expanduser()
    stages = [str(path / name) for name in ("grpo", "sft") if is_finished(path / name)]
    if stages:  # a run's output_dir, where its stages' outputs are one level down
        hint = f"it is a run folder: give one of its stages, {' or '.join(stages)}"
    elif path.is_dir() and any(path.glob("checkpoint-*")):
        hint = "it holds checkpoints of a stage that did not finish: run that stage again with --resume"
    else:
        hint = "give a model folder, an adapter or a Hub id"
    raise UserError(f"{spec!r} is neither a model (config.json and *.safetensors) nor a LoRA adapter "
                    f"(adapter_config.json) nor a finished stage output; {hint}")


def check_model_path(spec: str) -> None:
    """A model given as a local path (./, /, ~, or no Hub id such as runs/x/sft) that is not there, or an unknown
    `builtin:NAME`: one line before the data is prepared, which takes a while for the real dataset, not after."""
    if spec.startswith("builtin:"):
        from gsm8k_tr import builtin

        builtin.built_folder(spec)  # builds nothing
    elif _path_only(spec) and not Path(spec).expanduser().exists():
        _no_model(spec)


def _load_adapter(path: Path, recipe: Recipe) -> tuple[Any, Any]:
    modeling.refuse_pickle(path)  # PEFT would unpickle adapter_model.bin when no safetensors file is there
    config = read_object(path / "adapter_config.json", "save the adapter again, or evaluate the stage's merged/ folder")
    base = config.get("base_model_name_or_path")
    if not base or (_path_only(base) and not Path(base).expanduser().exists()):
        raise UserError(f"the adapter {str(path)!r} names base model {base!r}, which cannot be found; "
                        "evaluate the stage's merged/ folder instead, or restore the base model there")
    local = Path(base).expanduser()
    if local.is_dir():
        model = modeling.load_model(recipe.model, str(local))
    else:  # a Hub model, at the commit the adapter was trained on where it says (as PEFT's AutoPeftModel loads it)
        same = base == recipe.model.name_or_path
        revision = config.get("revision") or (recipe.model.revision if same else None)
        model = modeling.load_model(dataclasses.replace(recipe.model, name_or_path=base, revision=revision,
                                                        gguf_file=recipe.model.gguf_file if same else None))
    tokenizer = modeling.load_tokenizer(recipe.model, str(path if (path / "tokenizer_config.json").is_file() else local))
    # Merged weights generate faster than an adapter applied on every call; merged in float32, then cast.
    return modeling.merged_adapter(model, path), tokenizer


def evaluate(model: Any, tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe, samples: int = 1,
             progress: Any = None, vllm_folder: str | None = None, synced_gpus: bool = False,
             output: Path | None = None, weights: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate and grade answers for `rows`; returns (metrics, prediction records).

    Under `accelerate launch` each process answers its share of the rows and
    every process gets all records. With `vllm_folder` (a model folder or Hub
    id) vLLM generates instead of transformers. The metrics name the device,
    dtype and every decoding setting used. With `output` (the folder the
    caller writes them to), finished batches are kept on disk as they come
    (each process its own), and a run stopped part-way answers only the rest
    when run again (`answer_journal`); `weights` is the model's digest where
    the caller took it before its clock started.
    """
    from gsm8k_tr.infer import answer_journal
    from gsm8k_tr.processes import each_process, share_size, split_and_gather

    cfg = recipe.eval
    temperature = cfg.temperature
    if samples > 1 and temperature <= 0:
        temperature = 1.0  # k greedy samples would be k copies of one answer
        log.info("--samples %d: sampling at temperature 1.0 (eval.temperature is 0)", samples)

    resumed: list[int] = []  # questions an earlier run answered

    def answer(share: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [build_prompt(r["question"], recipe.prompt) for r in share]
        if vllm_folder is not None:
            from gsm8k_tr.infer import vllm_engine

            outputs = vllm_engine.complete_with_vllm(vllm_folder, tokenizer, prompts, cfg.max_new_tokens, temperature,
                                                     samples, recipe.seed, generation.stop_ids(model))
        else:
            key = {} if output is None else _answers_depend_on(model, tokenizer, prompts, recipe, samples, temperature,
                                                               weights)
            with answer_journal.kept_answers(output, key, next(model.parameters()).device) as journal:
                outputs = generation.generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size,
                                              temperature, samples, recipe.seed, progress, synced_gpus, recipe.decoding,
                                              journal)
                resumed.append(journal.resumed_prompts if journal is not None else 0)
        return [grade(r["question"], str(r["answer"]), out, recipe) for r, out in zip(share, outputs)]

    try:
        records = split_and_gather(rows, answer)
    except Exception as error:  # torch's traceback said where, not which key to change
        if not out_of_memory(error):
            raise
        raise UserError(f"the GPU ran out of memory answering {min(cfg.batch_size, len(rows))} questions at a time "
                        f"with up to {cfg.max_new_tokens} new tokens ({one_line(error)[:160]}); set "
                        f"eval.batch_size={max(1, cfg.batch_size // 2)} or lower eval.max_new_tokens, and run again "
                        "(a training stage's held-out check: the same command with --resume)") from error
    # every process's share (a launch's last shares repeat their last question to be as long as the rest)
    answered_before = min(sum(each_process(sum(resumed))), len(rows))
    parameter = next(model.parameters())
    batches = generation.batches(share_size(len(rows)), cfg.batch_size)  # this process's, as `generate` ran them
    how = "vllm" if vllm_folder is not None else placement.decoding(recipe.decoding, parameter.device, synced_gpus,
                                                                    batches, modeling.runs_on_static_cache(model))
    where = {"device": str(parameter.device), "dtype": str(parameter.dtype).removeprefix("torch."),
             "generation": generation.settings(cfg.max_new_tokens, temperature), "decoding": how,
             "attention": placement.decoding_attention(parameter.device, how),
             "stop_check": "vllm" if how == "vllm" else placement.stop_check(parameter.device, synced_gpus),
             **({"compile_failed": placement.compile_failure} if placement.compile_failure else {}),
             # answered by an earlier run that stopped part-way (`seconds` then counts only this run's)
             **({"resumed_questions": answered_before} if answered_before else {})}
    return {**metrics(records), **where}, records


def _answers_depend_on(model: Any, tokenizer: Any, prompts: list[str], recipe: Recipe, samples: int,
                       temperature: float, weights: str | None = None) -> dict[str, Any]:
    """What the answers of `evaluate` depend on, for `answer_journal`: the model's weights, the prompts as tokens,
    the generation settings, device, dtype and the versions that compute them."""
    import torch
    import transformers

    from gsm8k_tr import __version__
    from gsm8k_tr.infer.answer_journal import token_digest, weights_digest

    parameter = next(model.parameters())
    # the question count beside the prompts' digest names a --limit change plainly in the journal's warning
    return {"weights": weights or weights_digest(model), "questions": len(prompts),
            "prompts": token_digest(tokenizer, prompts),
            "stop_ids": generation.stop_ids(model), "pad_token_id": tokenizer.pad_token_id,
            "generation": generation.settings(recipe.eval.max_new_tokens, temperature), "samples": samples,
            "seed": recipe.seed, "batch_size": recipe.eval.batch_size, "decoding": recipe.decoding,
            "device": str(parameter.device), "dtype": str(parameter.dtype),
            "versions": {"gsm8k_tr": __version__, "torch": torch.__version__, "transformers": transformers.__version__}}


def check_backend(backend: str) -> None:
    """vLLM is an optional extra and needs a GPU; say so before loading anything."""
    if backend == "vllm":
        from gsm8k_tr.processes import is_distributed

        placement.require_vllm("--backend vllm", "use --backend hf")
        if is_distributed():
            raise UserError("--backend vllm runs in one process and uses the GPU itself; run evaluate without "
                            "accelerate launch")
    elif backend != "hf":
        raise UserError(f"--backend must be hf or vllm, got {backend!r}")


def default_output(recipe: Recipe, model_spec: str) -> str:
    """`{output_dir}/eval/<model>`: a stage output's name, or the model's last path part."""
    path = Path(model_spec)
    name = f"{path.parent.name}-{path.name}" if path.name in ("merged", "adapter") else path.name
    return str(Path(recipe.output_dir) / "eval" / (name.replace(":", "-") or "model"))


def check_args(limit: int | None, samples: int) -> None:
    """Reject --limit 0 and --samples < 1 before loading anything."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")


def main(model_spec: str, recipe: Recipe, split: str | None = None, limit: int | None = None, samples: int = 1,
         output: str | None = None, overwrite: bool = False, backend: str = "hf",
         device: str | None = None, evaluated_with: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `model_spec` on the recipe's prepared split; write metrics.json and predictions.jsonl.

    Under `accelerate launch` the processes share the questions and only the
    main process writes. `evaluated_with` (the pipeline's record of what the
    answers depend on) is kept in metrics.json.
    """
    from rich.progress import Progress

    from gsm8k_tr.infer import answer_journal
    from gsm8k_tr.outputs import atomic_directory, check_writable
    from gsm8k_tr.processes import is_distributed, process_state

    limit = limit if limit is not None else recipe.eval.limit
    check_args(limit, samples)
    check_backend(backend)
    check_model_path(model_spec)
    target = Path(output) if output else None
    if target is not None:
        check_writable(target, overwrite, "eval")
    rows = load_split(prepared_data(recipe), split or recipe.eval.split)[:limit]
    model, tokenizer, name = load_for_inference(model_spec, recipe, device)
    # read before the clock starts, as loading is: `seconds` times the answering (0.4 s for 355M bf16 on a CPU)
    weights = answer_journal.weights_digest(model) if backend == "hf" and target is not None else None
    started = time.perf_counter()
    if backend == "vllm":
        from gsm8k_tr.infer import vllm_engine

        with vllm_engine.model_folder(model, tokenizer, name) as folder:
            result, records = evaluate(model, tokenizer, rows, recipe, samples, vllm_folder=folder)
    else:
        with Progress(transient=True, disable=is_distributed()) as bar:
            task = bar.add_task(f"evaluating {len(rows)} questions", total=len(rows))
            result, records = evaluate(model, tokenizer, rows, recipe, samples, lambda n: bar.advance(task, n),
                                       output=target, weights=weights)
    result = {"model": name, "split": split or recipe.eval.split, "backend": backend, **result,
              "seconds": round(time.perf_counter() - started, 3),  # a rate over a short evaluation needs the ms
              **({"evaluated_with": evaluated_with} if evaluated_with is not None else {})}
    state = process_state() if is_distributed() else None
    if target is not None and (state is None or state.is_main_process):
        with atomic_directory(target, overwrite) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
            with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        answer_journal.finished(target)
    if state is not None:
        state.wait_for_everyone()
    return result
