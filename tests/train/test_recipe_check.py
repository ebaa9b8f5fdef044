"""The whole recipe is checked in seconds, before data is prepared or a model is loaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE, run_cli

TYPOS = [
    # (override, what the one line says, the section it checks)
    ("grpo.lossy_type=dapo", "unknown recipe key 'grpo.lossy_type' (did you mean 'grpo.loss_type'?): not an option "
                             "of TRL's GRPOConfig", "grpo"),
    ("grpo.num_generations=3", "generation_batch_size (4) must be divisible by num_generations (3)", "grpo (TRL's own)"),
    ("sft.lerning_rate=1e-4", "unknown recipe key 'sft.lerning_rate'", "sft"),
    ("sft.max_length=4096", "'sft.max_length' is 4096, past the model's context of 512", "sft against the model"),
    ("rewards.corectness=1", "unknown reward 'corectness'", "rewards"),
    ("rewards.correctness.requires_format=yes", "must be one of none, soft, strict", "a reward's parameter"),
    ("eval.split=dev", "'eval.split' must be one of train, validation, test", "eval"),
    ("eval.device=cuda:3", "no CUDA GPU", "eval's device"),
    ("eval.max_new_tokens=600", "'eval.max_new_tokens' is 600, which leaves no room", "eval against the model"),
    ("prompt_filter.keep_below=2", "recipe section 'prompt_filter' needs", "prompt_filter"),
    ("model.stop_token=<|nope|>", "model.stop_token '<|nope|>' is not a single token", "model's tokenizer"),
    ("model.name_or_path=./no-such-model", "'model.name_or_path': './no-such-model' does not exist", "model"),
    # no Hub id (two '/'): a path, told so at once, not asked of the Hub, whose error was about repo ids
    ("model.name_or_path=runs/x/sft/merged", "'model.name_or_path': 'runs/x/sft/merged' does not exist", "a path"),
    ("data.dataset=./missing.csv", "'data.dataset': './missing.csv' does not exist", "data"),
    ("data.dataset=synthetic:lots", "write synthetic:N with N a whole number", "data"),
    ("lora.r=many", "'lora.r' must be int", "lora"),
    # each stopped in a traceback when the stage began (numpy's seed range; PEFT's rank check)
    ("seed=-1", "recipe key 'seed' must be from 0 to 2**32 - 1, got -1", "seed"),
    ("lora.r=0", "recipe section 'lora' needs r >= 1, alpha > 0 and 0 <= dropout < 1", "lora rank"),
    # each trained without a word: an adapter scaled to nothing, the answer read from the reasoning's tag,
    # no row aligned, a folder loaded whatever the revision asked
    ("lora.alpha=0", "recipe section 'lora' needs r >= 1, alpha > 0", "lora alpha"),
    ("prompt.answer_tag=sebep", "'prompt.reasoning_tag' and 'prompt.answer_tag' must differ", "prompt tags"),
    ("prompt.reasoning_tag=a b", "'prompt.reasoning_tag' must be a tag name without spaces", "prompt tag"),
    ("data.min_align_score=2", "'data.min_align_score' must be in [0, 1], got 2.0", "alignment"),
    ("model.revision=v2", "'model.revision' is 'v2', but 'builtin:tiny-gpt2' is not a Hub model", "model revision"),
    # each stopped in a traceback once training had begun (in a pipeline: after SFT), from TRL's loss, torch's
    # optimizer or transformers' sampling; or trained without a word (a negative KL weight)
    ("grpo.loss_type=xx", "'grpo.loss_type' must be one of grpo, dr_grpo, dapo", "grpo loss"),
    ("grpo.scale_rewards=maybe", "'grpo.scale_rewards' must be one of group, batch, none", "grpo reward scaling"),
    ("grpo.temperature=0", "'grpo.temperature': `temperature` (=0.0) has to be a strictly positive float", "sampling"),
    ("grpo.top_k=-5", "'grpo.top_k': `top_k` has to be a strictly positive integer", "sampling's top_k"),
    ("sft.learning_rate=-1", "'sft.learning_rate' must be 0 or more, got -1.0", "learning rate"),
    ("grpo.beta=-1", "'grpo.beta' must be at least 0.0, got -1.0", "KL weight"),
    ("grpo.epsilon_high=-1", "'grpo.epsilon_high' must be above 0.0, got -1.0", "upper clipping"),
    ("grpo.delta=-1", "'grpo.delta' must be above 0.0, got -1.0", "two-sided clipping"),
    ("grpo.top_entropy_quantile=1.5", "'grpo.top_entropy_quantile' must be at most 1, got 1.5", "entropy quantile"),
    # greedy rollouts: every completion of a group the same, so GRPO learned nothing, without a word
    ("grpo.top_p=0", "'grpo.top_p' must be above 0.0, got 0.0", "top_p"),
    # the first loss was NaN, and the guard then blamed the learning rate
    ("grpo.sapo_temperature_neg=0", "'grpo.sapo_temperature_neg' must be above 0.0, got 0.0", "SAPO temperature"),
    ("grpo.vespo_lambda_pos=0", "'grpo.vespo_lambda_pos' must be above 0.0, got 0.0", "VESPO rate"),  # clamped by TRL
    ("grpo.vespo_k_neg=-1", "'grpo.vespo_k_neg' must be at least 0.0, got -1.0", "VESPO shape"),
    ("grpo.off_policy_mask_threshold=-1", "'grpo.off_policy_mask_threshold' must be at least 0.0", "off-policy mask"),
    # TRL's trainer raised NotImplementedError with a LoRA model, once the stage had begun
    ("grpo.sync_ref_model=true", "'grpo.sync_ref_model' must be false: GRPO trains a LoRA adapter", "reference sync"),
    # switches TRL, transformers or torch refused in a traceback once the trainer was built
    ("sft.assistant_only_loss=true", "'sft.assistant_only_loss' must be false: SFT's rows are a prompt and a",
     "assistant-only loss"),
    ("sft.dataloader_persistent_workers=true", "'sft.dataloader_persistent_workers' needs sft.dataloader_num_workers "
                                               "above 0", "persistent workers"),
    ("sft.eval_on_start=true", "'sft.eval_on_start' needs SFT's held-out checks (sft.eval_strategy: steps)",
     "SFT eval on start"),
    ("grpo.eval_on_start=true", "'grpo.eval_on_start' must be false: GRPO's held-out checks", "GRPO eval on start"),
    ("grpo.cast_lm_head_to_fp32=true", "'grpo.cast_lm_head_to_fp32' is not supported with gpt2's tied embeddings",
     "lm head cast"),
    # PEFT would train c_attn alone and say nothing of the typo beside it
    ("lora.target_modules=[c_attn,c_fcc]", "lora.target_modules: 'c_fcc' names no layer of the model", "lora targets"),
    ("lora.target_modules=[ln_1]", "'ln_1' matches transformer.h.0.ln_1 (LayerNorm), which LoRA cannot adapt",
     "lora targets' kind"),
    # TRL stopped here with a traceback: its loss reads the head's weight, so an adapter there never trains
    ("lora.target_modules=[c_attn,lm_head]", "'lm_head' matches lm_head, the output head", "lora on the head"),
    # trained, then merged into the weight the head shares: the merged model's logits moved by 20% of their scale
    ("lora.target_modules=[c_attn,wte]", "'wte' matches transformer.wte, the input embeddings, which share",
     "lora on tied embeddings"),
    # null where TRL takes a number: `check` said ok, then a TypeError in TRL or the Trainer ("'>' not supported
    # between instances of 'NoneType' and 'int"), at once or at the first step; null where TRL allows it still passes
    ("sft.max_steps=null", "'sft.max_steps' cannot be null: TRL's SFTConfig takes int there; give a value or leave "
                           "the key out (left out, it is -1)", "null step count"),
    ("grpo.learning_rate=null", "'grpo.learning_rate' cannot be null: TRL's GRPOConfig takes float there",
     "null learning rate"),
    ("eval.batch_size=null", "recipe key 'eval.batch_size' must be int, got null", "null in our own sections"),
    # every weight 0: GRPO trained with every advantage 0 and learned nothing, without a word
    ("rewards={correctness: 0, strict_format: 0, soft_format: 0, xmlcount: 0}",
     "recipe section 'rewards' needs a reward with a positive weight", "rewards all off"),
    # check said ok to both: YAML reads .nan and .inf as floats
    ("sft.learning_rate=.nan", "recipe key 'sft.learning_rate' must be a finite number, got nan", "NaN"),
    ("grpo.beta=.inf", "recipe key 'grpo.beta' must be a finite number, got inf", "infinity"),
    # each stopped in a traceback from torch's DataLoader or sampler once the stage began
    ("sft.max_length=0", "recipe key 'sft.max_length' must be at least 1, got 0", "SFT length 0"),
    ("grpo.generation_batch_size=0", "recipe key 'grpo.generation_batch_size' must be at least 1, got 0",
     "GRPO generation batch 0"),
    ("grpo.steps_per_generation=0", "'grpo.steps_per_generation' must be at least 1, got 0", "GRPO steps a call 0"),
    ("sft.dataloader_num_workers=-1", "'sft.dataloader_num_workers' must be 0 or more, got -1", "loader workers"),
    # each stopped the first step in a traceback, from torch's optimizer or NEFTune's noise; or trained without a word
    # (a negative weight decay grows the weights: torch checks only its default, not the trainer's groups)
    ("sft.adam_beta1=-1", "recipe section 'sft': its optimizer (adamw_torch_fused) refuses these settings: Invalid "
                          "beta parameter at index 0: -1.0", "optimizer's betas"),
    ("grpo.adam_epsilon=-1", "its optimizer (adamw_torch_fused) refuses these settings: Invalid epsilon value",
     "optimizer's epsilon"),
    ("sft.lr_scheduler_type=warmup_stable_decay", "recipe section 'sft': its learning-rate schedule "
     "(warmup_stable_decay) refuses these settings (sft.lr_scheduler_kwargs: {}): get_wsd_schedule() missing 1 "
     "required positional argument: 'num_decay_steps'", "a schedule's missing argument"),
    ("sft.lr_scheduler_kwargs={min_lr: 0.1}", "its learning-rate schedule (cosine) refuses these settings "
     "(sft.lr_scheduler_kwargs: {'min_lr': 0.1})", "a schedule's unknown argument"),
    ("sft.neftune_noise_alpha=-1", "recipe key 'sft.neftune_noise_alpha' must be above 0, got -1.0", "NEFTune"),
    ("grpo.weight_decay=-1", "recipe key 'grpo.weight_decay' must be at least 0, got -1.0", "weight decay"),
    # each trained nothing without a word ("0 steps") and saved its start as the stage's output; or, for the empty
    # list, adapted every linear layer as if the key were null
    (("sft.max_steps=-1", "sft.num_train_epochs=0"), "'sft.num_train_epochs' must be above 0 when sft.max_steps is -1",
     "no SFT epochs"),
    (("grpo.max_steps=-1", "grpo.num_train_epochs=-1"),
     "'grpo.num_train_epochs' must be above 0 when grpo.max_steps is -1", "no GRPO epochs"),
    ("lora.target_modules=[]", "recipe key 'lora.target_modules' is an empty list; name the layers to adapt, or set "
                               "it to null", "no lora targets"),
    # GRPO's held-out check found its split empty when GRPO began, after SFT
    ("data.validation_fraction=0", "the in-training checks (eval.every_steps) grade held-out answers on the "
                                   "validation split, which data.validation_fraction=0 leaves empty", "no validation"),
]


def _overrides(override: str | tuple[str, ...]) -> tuple[str, ...]:
    """A case's overrides: one, or several that are wrong only together."""
    return override if isinstance(override, tuple) else (override,)


@pytest.mark.parametrize("override,message,section", TYPOS,
                         ids=[t[2] + ": " + " ".join(_overrides(t[0])) for t in TYPOS])
def test_a_typo_in_any_section_stops_the_pipeline_before_any_work(override, message, section, tmp_path,
                                                                    tiny_model_dir) -> None:
    run = tmp_path / "run"
    started = time.perf_counter()
    done = run_cli("pipeline", "--config", str(TINY_RECIPE), f"output_dir={run}", *_overrides(override))
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr, done.stderr[-2000:]
    assert "[1/7]" not in done.stdout and not (run / "data").exists(), "nothing is prepared before the check"
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("command", ["sft", "grpo", "check"])
def test_stages_and_check_stop_on_the_other_stages_typo(command: str, tmp_path: Path, tiny_model_dir) -> None:
    # `sft` alone checks the grpo section too: the run will need it an hour later.
    done = run_cli(command, "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "grpo.lossy_type=dapo")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"gsm8k-tr {command}: error: unknown recipe key 'grpo.lossy_type'" in done.stderr
    assert not (tmp_path / "run" / "sft").exists()


def test_an_optimizer_from_a_package_not_installed_is_named(tmp_path: Path, tiny_model_dir) -> None:
    # transformers stopped the trainer's first step with an ImportError traceback
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "sft.optim=adamw_bnb_8bit")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "recipe key 'sft.optim' is adamw_bnb_8bit: You need to install `bitsandbytes`" in done.stderr


def test_switches_this_machine_lacks_are_named(tmp_path: Path, tiny_model_dir, monkeypatch) -> None:
    # Each stopped the trainer in a traceback: a missing package, no GPU, no Hub or no token for pushing
    import huggingface_hub
    from transformers.utils import is_liger_kernel_available

    from gsm8k_tr import hub, placement

    def check(*overrides: str) -> str:
        done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", *overrides)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        return done.stderr

    if not is_liger_kernel_available():
        assert "'sft.use_liger_kernel' needs liger-kernel, which is not installed" in check("sft.use_liger_kernel=true")
    monkeypatch.setattr(placement, "has_cuda", lambda: False)
    assert "'sft.activation_offloading' needs a CUDA GPU" in check("sft.activation_offloading=true")
    monkeypatch.setattr(hub, "before_loading", lambda name: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = check("grpo.push_to_hub=true")
    assert "'grpo.push_to_hub' needs the Hugging Face Hub, and the Hub is not reachable" in offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    assert "and no Hugging Face token is set" in check("sft.push_to_hub=true")
    # SFT's own evaluations at its start
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "sft.eval_on_start=true",
                   "sft.eval_strategy=steps", "sft.eval_steps=10")
    assert done.returncode == 0, done.stderr


UNSAVED = [(("sft.save_strategy=no",), "sft.save_strategy is no: the stage writes no checkpoints, so a run that is "
                                       "killed"),
           (("grpo.save_strategy=best",), "grpo.save_strategy is best: the stage saves only at its evaluations, and "
                                          "runs none"),
           (("sft.save_strategy=epoch",), None)]


@pytest.mark.parametrize("overrides, said", UNSAVED)
def test_a_stage_that_saves_no_checkpoints_is_told(overrides, said, tmp_path: Path, tiny_model_dir,
                                                   monkeypatch) -> None:
    # It trained to the end without a word, and a killed run then started again from its first step. Said once a
    # process, however often the configs are built: as a fresh process would.
    from gsm8k_tr.train import trl_configs

    monkeypatch.setattr(trl_configs, "_said", set())
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", *overrides)
    assert done.returncode == 0, done.stderr
    assert (said in done.stderr) if said else "save_strategy is" not in done.stderr, done.stderr


def test_a_schedule_with_its_arguments_passes(tmp_path: Path, tiny_model_dir) -> None:
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}",
                   "sft.lr_scheduler_type=cosine_with_min_lr", "sft.lr_scheduler_kwargs={min_lr_rate: 0.1}")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_lora_targets_that_name_the_models_layers_pass(tmp_path: Path, tiny_model_dir) -> None:
    # GPT-2's c_proj is both attention's output and the MLP's; one entry may name several layers. Embeddings that
    # the head does not share (GPT-2's positions) take an adapter.
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}",
                   "lora.target_modules=[c_attn,c_proj,wpe]")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_lora_on_untied_input_embeddings_trains_the_model_it_saves(tmp_path: Path, tiny_model_dir) -> None:
    # Where the head has its own weight, an adapter on the input embeddings trains, and the merged model the stage
    # saves answers as the adapter does.
    import torch
    from conftest import family_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = family_model("qwen2", tiny_model_dir, tmp_path / "qwen2")  # Qwen2's config leaves the head untied
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model}",
                   "lora.target_modules=[q_proj,embed_tokens]", "sft.max_steps=4")
    assert done.returncode == 0, done.stderr[-2000:]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, use_kernels=False),
                                        tmp_path / "run" / "sft" / "adapter")
    trained = [p for name, p in adapted.named_parameters() if "lora_embedding_B" in name]
    assert trained and all(p.abs().max() > 0 for p in trained)  # B starts at zero
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "merged", use_kernels=False)
    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_check_prints_ok_and_says_what_it_could_not_see(tmp_path: Path) -> None:
    done = run_cli("check", "--config", str(ROOT / "recipes" / "turkish-gpt2-medium.yaml"), f"output_dir={tmp_path}")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    # No Hub access in the tests: the real model is not local, and the check says so instead of failing.
    assert "not in the local cache" in done.stderr


def test_every_reference_prepare_reads_passes_and_one_without_a_test_split_is_refused(
        tmp_path: Path, tiny_model_dir, turkish_csv: Path, reference_dir: Path) -> None:
    # Before, the check asked for train.jsonl and test.jsonl and refused the Hub's shards that prepare reads (the
    # README's `huggingface-cli download` folder) with "has no train.jsonl".
    import datasets
    import pyarrow.parquet as pq

    shards, saved = tmp_path / "download" / "main", tmp_path / "saved"
    shards.mkdir(parents=True)
    for split in ("train", "test"):
        pq.write_table(datasets.Dataset.from_json(str(reference_dir / f"{split}.jsonl")).data.table,
                       shards / f"{split}-00000-of-00001.parquet")
    datasets.DatasetDict(
        {split: datasets.Dataset.from_json(str(reference_dir / f"{split}.jsonl")) for split in ("train", "test")}
    ).save_to_disk(str(saved))
    common = ["check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", f"data.dataset={turkish_csv}"]
    for reference in (reference_dir, shards, saved):
        done = run_cli(*common, f"data.reference={reference}")
        assert done.returncode == 0 and done.stdout == "ok\n", (reference, done.stderr[-2000:])
    (reference_dir / "test.jsonl").unlink()
    done = run_cli(*common, f"data.reference={reference_dir}")
    assert done.returncode == 2
    assert f"recipe key 'data.reference': '{reference_dir}' has no 'test' split (it has train)" in done.stderr
    done = run_cli(*common, f"data.reference={shards.parent}")  # the download's own folder: the one inside it named
    assert done.returncode == 2 and "give the folder inside it that holds them: main" in done.stderr


def test_choosing_the_model_on_the_split_evaluation_reports_is_warned_about(tmp_path: Path, tiny_model_dir) -> None:
    choosing = ["sft.eval_strategy=steps", "sft.eval_steps=10", "sft.load_best_model_at_end=true",
                "eval.grpo_keep_best=true"]
    common = ["check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", *choosing]
    done = run_cli(*common, "eval.held_out_split=test")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]
    assert ("sft.load_best_model_at_end and eval.grpo_keep_best choose the model by its accuracy on the test split, "
            "which evaluation then reports: that accuracy will look better than the model is") in done.stderr
    done = run_cli(*common)  # on the validation split: no warning
    assert done.returncode == 0 and "will look better" not in done.stderr
    # Checks on the training split grade what the stages train on: not held out at all
    done = run_cli(*common, "eval.held_out_split=train")
    assert done.returncode == 0 and ("eval.held_out_split is train: the in-training checks (sft.eval_strategy, "
                                     "eval.every_steps) grade questions the stages train on") in done.stderr
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "eval.held_out_split=train",
                   "eval.every_steps=0")  # no checks: nothing to say
    assert done.returncode == 0 and "held_out_split is train" not in done.stderr


def test_a_prepared_folder_without_validation_rows_is_refused_before_its_checks(tmp_path: Path, tiny_model_dir) -> None:
    data = tmp_path / "data"
    assert run_cli("prepare", "--config", str(TINY_RECIPE), "data.validation_fraction=0", "--output", str(data)
                   ).returncode == 0
    common = ["check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", f"data.dataset={data}"]
    for _ in ("empty", "missing"):  # a folder prepared before 0.2 has none
        done = run_cli(*common)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert f"validation split, which is empty or missing in {data}; prepare the data again" in done.stderr
        (data / "validation.jsonl").unlink(missing_ok=True)


def test_null_where_trl_takes_it_passes(tmp_path: Path, tiny_model_dir) -> None:
    # SFT's max_length (no truncation) and GRPO's min_p (off) are None in TRL's own defaults or annotations
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "sft.max_length=null",
                   "grpo.min_p=null", "sft.eval_steps=null")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


def test_strategies_written_no_pass_the_check_as_no(tmp_path: Path) -> None:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train.trl_configs import sft_args

    # YAML 1.1 reads `no` as false, in a recipe file and on the command line alike.
    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path}", "sft.eval_strategy=no", "sft.save_strategy=no"])
    assert recipe.sft["eval_strategy"] is False
    config = sft_args(recipe, "<|stop|>", 512)
    assert config.eval_strategy == "no" and config.save_strategy == "no"


def test_a_recipe_past_its_sized_for_gib_is_warned_about(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "turkish-gpt2-medium.yaml"
    for command in ("check", "plan"):
        done = run_cli(command, "--config", str(recipe), f"output_dir={tmp_path}", "sized_for_gib=8")
        assert done.returncode == 0, done.stderr
        assert "says sized_for_gib: 8, but its plan needs more there (sft" in done.stderr, (command, done.stderr)
    quiet = run_cli("check", "--config", str(recipe), f"output_dir={tmp_path}")
    assert "sized_for_gib" not in quiet.stderr


def test_a_run_folder_prepared_from_other_data_is_refused_first(tmp_path: Path, tiny_model_dir) -> None:
    run = tmp_path / "run"
    assert run_cli("prepare", "--config", str(TINY_RECIPE), f"output_dir={run}").returncode == 0
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "data.dataset=synthetic:150")
    assert done.returncode == 2 and "prepared from a different 'data' section" in done.stderr


def test_grpo_choices_are_the_ones_trl_documents() -> None:
    # TRL reads these only once training has begun; the check holds them to the values TRL's own help text lists.
    import dataclasses
    import re

    import trl

    from gsm8k_tr.train.trl_configs import GRPO_CHOICES

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(trl.GRPOConfig)}
    for key, choices in GRPO_CHOICES.items():
        assert all(f"'{choice}'" in helps[key] or f"{choice}'" in helps[key] for choice in choices), key
    listed = re.search(r"Supported values are (.*?)\. ", helps["loss_type"]).group(1)
    assert set(re.findall(r"'(\w+)'", listed)) == set(GRPO_CHOICES["loss_type"])


def test_a_learning_rate_of_0_is_warned_about(tmp_path: Path, tiny_model_dir) -> None:
    # torch takes it (a run that times the steps), and the run trained nothing without a word
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "grpo.learning_rate=0")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    assert "recipe key 'grpo.learning_rate' is 0: the adapter will not change from its start" in done.stderr
    done = run_cli("check", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}")
    assert done.returncode == 0 and "learning_rate" not in done.stderr
