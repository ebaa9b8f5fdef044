"""Two CPU processes (gloo) through `accelerate launch` with the shipped DDP config: both train, one saves; and with
the shipped FSDP config, its weights sharded as on GPUs (`sharded_on_cpu.py`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE, as_killed, same_tensors, tensors

DDP = ROOT / "recipes" / "accelerate" / "ddp.yaml"
FSDP = ROOT / "recipes" / "accelerate" / "fsdp.yaml"
SHARDED_ON_CPU = Path(__file__).with_name("sharded_on_cpu.py")
ADAPTER = "adapter_model.safetensors"
STOPPING_RANK = Path(__file__).with_name("stopping_rank.py")
THREADS_AT_EXIT = Path(__file__).with_name("threads_at_exit.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, program: tuple[str, ...] = ("-m", "gsm8k_tr"), env: dict[str, str] | None = None,
            config: Path = DDP) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", "2", "--main_process_port", str(_free_port()), *program, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def _failure(done: subprocess.CompletedProcess) -> str:
    """What a failed launch said: each rank's one-line error first (one rank's can lie far above the other's
    traceback of the barrier it was left waiting at), then the end of its stderr."""
    lines = [line for line in done.stderr.splitlines() if "gsm8k-tr" in line and "error:" in line]
    return "\n".join(lines) + "\n" + done.stderr[-3000:]


def test_the_main_process_writes_to_the_stage_folder_only_after_every_process_looked(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """Under a launch each process looks for an earlier run in the stage folder before it trains. A process that
    looked after the main one had written its write test there stopped with "already holds a sft run", and the
    two-process launch below failed at random (twice under load). Here the main process's writes to the folder are
    watched: none may come before the barrier every process reaches once it has looked."""
    from contextlib import contextmanager

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import stage

    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}"])
    folder = stage.stage_dir(recipe, "sft")

    class MainProcess:  # accelerate's state as the main process of two sees it
        is_main_process, everyone_looked = True, False

        def wait_for_everyone(self) -> None:
            self.everyone_looked = True

        @contextmanager
        def main_process_first(self):
            yield
            self.wait_for_everyone()

    state, early = MainProcess(), []
    write_text = Path.write_text

    def watched(path: Path, *args, **kwargs):
        if folder in path.parents and not state.everyone_looked:
            early.append(path.relative_to(folder))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", watched)
    monkeypatch.setattr(stage, "process_state", lambda: state)
    stage.begin(recipe, "sft", resume=False, overwrite=False)
    assert early == [] and (folder / "checkpoints" / stage.START_MODEL).is_file()


@pytest.mark.slow
def test_a_late_process_does_not_find_the_main_ones_write_test(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The race above on a real two-process launch, its timing made certain (`late_rank.py`): the old order fails
    here with the one line CI had shown; now rank 0 waits for rank 1 to look, and rank 1 finds nothing."""
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "sft.max_steps=1",
                   "sft.save_steps=1", program=(str(Path(__file__).with_name("late_rank.py")),))
    assert done.returncode == 0, _failure(done)


@pytest.mark.slow
def test_sft_and_grpo_on_two_processes(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    common = ("--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=6", "sft.save_steps=3",
              "sft.logging_steps=3", "grpo.max_steps=2", "grpo.save_steps=1", "eval.every_steps=1",
              "eval.grpo_keep_best=true")
    for stage in ("sft", "grpo"):
        done = _launch(stage, *common)
        assert done.returncode == 0, _failure(done)
        log = done.stderr
        # Both ranks took part and finished at the same step; only the main process saved.
        for rank in (0, 1):
            assert f"process {rank} of 2" in log, log[-2000:]
            assert f"process {rank} of 2 finished {stage}" in log
        assert log.count(f"saved {stage} outputs") == 1
        assert done.stdout.count(f"{stage}: ") == 1, done.stdout  # the result's line: the main process's only
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["processes"] == 2
        assert (run / stage / "merged" / "model.safetensors").is_file()
        assert not list((run / stage).rglob(".*tmp*")) and not (run / stage / "checkpoints" / ".saving").exists()
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    assert [e["step"] for e in history if "reward" in e] == [1, 2]
    assert any("eval/accuracy" in e for e in history)  # the held-out check ran on rank 0 without hanging rank 1
    # The best check is written by rank 0 and read by both, which load it before the save (a tie keeps the later).
    assert [e["step"] for e in history if "eval/accuracy" in e] == [0, 1, 2]
    kept = json.loads((run / "grpo" / "manifest.json").read_text())["held_out_kept"]
    assert kept["last_step"] == 2 and kept["kept_step"] in (0, 1, 2)
    sft_history = json.loads((run / "sft" / "log_history.json").read_text())
    assert sft_history[-1]["step"] == 6


@pytest.mark.slow
def test_the_pipeline_on_two_processes_shares_evaluations_and_writes_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    done = _launch("pipeline", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=4", "grpo.max_steps=2",
                   "eval.limit=9", "eval.every_steps=1", "eval.held_out_size=8")
    assert done.returncode == 0, _failure(done)
    out = done.stdout + done.stderr
    assert done.stdout.count("[1/7] preparing data") == 1 and done.stdout.count("report: ") == 1  # the main process
    # Each evaluation: 9 questions in shares of 5 (the last one repeated), answered once each in the metrics.
    for rank in (0, 1):
        assert out.count(f"process {rank} of 2: 5 of 9 items") == 3, out[-3000:]
    for name in ("base", "sft", "grpo"):
        metrics = json.loads((run / "eval" / name / "metrics.json").read_text())
        assert metrics["n"] == 9
        lines = (run / "eval" / name / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 9 and len({json.loads(line)["question"] for line in lines}) == 9
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")]  # no second writer's leftovers
    report = json.loads((run / "report.json").read_text())
    assert set(report["stages"]) == {"base", "sft", "grpo"}
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    assert [e["step"] for e in history if "eval/accuracy" in e] == [1, 2]


@pytest.mark.slow
def test_an_evaluation_stopped_on_two_processes_answers_only_the_rest(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each process keeps its share's answered batches; a launch that stopped with rank 1 three batches in and rank 0
    one (`stopping_rank.py`) answers, run again, all but the batch both kept, with the tokens of a launch never
    stopped (sampled: the generators restored in each process)."""
    from conftest import run_cli

    common = ["--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}"]
    assert run_cli("prepare", *common).returncode == 0
    evaluation = ["evaluate", *common, "--model", str(tiny_model_dir), "--limit", "9", "--samples", "2",
                  "eval.batch_size=2", "eval.max_new_tokens=16"]  # shares of 5: batches of 2, 2 and 1
    whole = _launch(*evaluation, "--output", str(tmp_path / "whole"))
    assert whole.returncode == 0, _failure(whole)
    assert whole.stdout.count('"accuracy"') == 1 and whole.stdout.count("wrote ") == 1, whole.stdout  # the writer's
    journals = [tmp_path / f".part.answers.{rank}-of-2.jsonl" for rank in (0, 1)]
    stopped = _launch(*evaluation, "--output", str(tmp_path / "part"), program=(str(STOPPING_RANK),),
                      env={"STOP_AT": "1", "WAIT_FOR": str(journals[1]), "ANSWERED": "3"})
    assert stopped.returncode != 0 and "stopped" in stopped.stderr, _failure(stopped)
    assert [len(path.read_text().splitlines()) for path in journals] == [2, 4]  # the key, then the batches kept
    resumed = _launch(*evaluation, "--output", str(tmp_path / "part"))
    assert resumed.returncode == 0, _failure(resumed)
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["resumed_questions"] == 4  # 2 a process
    predictions = [(tmp_path / name / "predictions.jsonl").read_text() for name in ("part", "whole")]
    assert predictions[0] == predictions[1]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


FSDP = ROOT / "recipes" / "accelerate" / "fsdp.yaml"


# Each launch, its command, and the one line it must end with. They run at once: each is mostly library imports.
LOST = [
    # accelerate runs FSDP only on CUDA GPUs; on CPU processes it quietly trains unsharded (MULTI_CPU).
    (["--config_file", str(FSDP), "--num_processes", "2"], "sft",
     "asks for FSDP, which accelerate runs only on CUDA GPUs"),
    # --cpu makes accelerate start one plain process, whatever the config and --num_processes say.
    (["--config_file", str(FSDP), "--cpu", "--num_processes", "2"], "sft", "--cpu started 1 unsharded process, but the "
                                                                            "launch asked for 2 process(es) (FSDP)"),
    # The pipeline stops before its first stage too: it had prepared the data and evaluated the base model first.
    (["--config_file", str(DDP), "--cpu"], "pipeline", "asked for 2 process(es) (MULTI_GPU)"),
]


@pytest.mark.slow
def test_a_launch_that_loses_its_sharding_or_processes_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    running = []
    for i, (launch, name, says) in enumerate(LOST):
        command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port",
                   str(_free_port()), "-m", "gsm8k_tr", name, "--config", str(TINY_RECIPE),
                   f"output_dir={tmp_path / str(i)}"]
        running.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT),
                        name, says, tmp_path / str(i)))
    for process, name, says, run in running:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode != 0, says
        lines = [line for line in stderr.splitlines() if line.startswith(f"gsm8k-tr {name}: error:")]
        assert lines and all(says in line for line in lines), stderr[-2000:]
        assert not run.exists()  # nothing prepared, evaluated or trained


def _rank(pid: int) -> int | None:
    """The RANK a launched worker process runs as (Linux's /proc), None for another process."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(item[5:]) for item in environ if item.startswith(b"RANK=")), None)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the launch's workers in Linux's /proc")
def test_a_sigterm_to_one_process_stops_both_at_one_step_with_its_checkpoint(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    # Each process stopping alone (transformers' enable_jit_checkpoint) would leave the other waiting at the next step.
    run, output = tmp_path / "run", tmp_path / "output.txt"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_processes", "2",
               "--main_process_port", str(_free_port()), "-m", "gsm8k_tr", "sft", "--config", str(TINY_RECIPE),
               f"output_dir={run}", "sft.max_steps=100000", "sft.save_steps=100000", "sft.logging_steps=1",
               "eval.every_steps=0"]
    with output.open("w") as sink:
        launcher = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 300
        while "step 3:" not in output.read_text(errors="replace") and launcher.poll() is None \
                and time.time() < deadline:
            time.sleep(0.1)
        workers = [int(pid) for pid in os.popen(f"pgrep -f 'gsm8k_tr sft .*output_dir={run}'").read().split()]
        second = [pid for pid in workers if _rank(pid) == 1]
        assert len(second) == 1, (workers, output.read_text(errors="replace")[-2000:])
        os.kill(second[0], signal.SIGTERM)  # the signal reaches one process only
        launcher.wait(timeout=300)
    text = output.read_text(errors="replace")
    stops = re.findall(r"gsm8k-tr sft: stopped by SIGTERM at step (\d+);", text)
    assert len(stops) == 2 and stops[0] == stops[1], text[-3000:]  # both processes, at one step
    saved = sorted(p.name for p in (run / "sft" / "checkpoints").glob("checkpoint-*"))
    assert saved == [f"checkpoint-{stops[0]}"]
    assert json.loads((run / "sft" / "checkpoints" / saved[0] / "trainer_state.json").read_text())["global_step"] == \
        int(stops[0])
    # No process failed in a traceback of ours (the launcher reports their exit status 143 with a traceback of its own)
    assert not re.search(r'File "[^"]*/(gsm8k_tr|transformers|trl)/', text), text[-3000:]
    assert not (run / "sft" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts the processes' threads in Linux's /proc")
def test_no_process_runs_gloos_threads_once_its_command_has_returned(tmp_path: Path, tiny_model_dir: Path) -> None:
    """CI failed once with a rank that had answered its share dying at exit: "terminate called without an active
    exception" (SIGABRT), and torchrun failing the launch. The process group's gloo threads were left to the
    interpreter's exit: nothing destroyed the group, and destroying it is not enough, since
    `torch.distributed.nn.functional` (imported with dynamo by `from_pretrained`) holds it as a default argument and
    the trainers hold it in reference cycles. The pipeline covers both: models loaded, both trainers, evaluations."""
    done = _launch("pipeline", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", "sft.max_steps=2",
                   "grpo.max_steps=1", "eval.limit=4", program=(str(THREADS_AT_EXIT),))
    assert done.returncode == 0, _failure(done)
    counts = sorted(re.findall(r"rank (\d): gloo threads at exit: (\d+)", done.stdout))
    assert counts == [("0", "0"), ("1", "0")], done.stdout[-2000:]


CLOSING = """
import sys, torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
from gsm8k_tr.cli import main
code = main(sys.argv[2:])
print("returned", code, "process group", dist.is_initialized())
"""


@pytest.mark.parametrize("command, said", [
    (["check", "--config", str(TINY_RECIPE), "output_dir={run}"], "returned 0 process group False"),
    (["report", "/nonexistent"], "returned 2 process group True"),  # a rank that raised leaves the rest to torchrun
])
def test_a_command_that_returned_destroys_its_process_group(command: list[str], said: str, tmp_path: Path,
                                                            tiny_model_dir: Path) -> None:
    """One that raised does not: a teardown could wait on a rank still in a collective."""
    command = [part.format(run=tmp_path / "run") for part in command]
    done = subprocess.run([sys.executable, "-c", CLOSING, str(tmp_path / "store"), *command], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert said in done.stdout, done.stderr[-3000:]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny recipe's SFT under the shipped FSDP config on two CPU processes: every weight and gradient a DTensor
    sharded across them, as on GPUs."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", config=FSDP, program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    return run


@pytest.mark.slow
def test_sft_under_fsdp_trains_the_adapter_ddp_trains(fsdp_run: Path, tmp_path: Path) -> None:
    # Before, the non-finite guard's all-reduce of a DTensor gradient norm stopped the first optimizer step
    # ("c10d.allreduce_.default does not have a sharding strategy registered").
    manifest = json.loads((fsdp_run / "sft" / "manifest.json").read_text())
    assert (manifest["distributed_type"], manifest["processes"]) == ("FSDP", 2)
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'ddp'}")
    assert done.returncode == 0, _failure(done)
    import torch

    sharded = tensors(fsdp_run / "sft" / "adapter" / ADAPTER)
    whole = tensors(tmp_path / "ddp" / "sft" / "adapter" / ADAPTER)
    assert sharded.keys() == whole.keys() and any(v.any() for k, v in whole.items() if "lora_B" in k)
    assert all(torch.allclose(sharded[k], whole[k], atol=1e-6) for k in whole)


def _killed_after_step_20(fsdp_run: Path, run: Path) -> None:
    """A copy of the fixture's SFT run as a kill after step 20's checkpoint leaves it: no step-30 checkpoint, no
    outputs."""
    import shutil

    for name in ("data", "sft"):
        shutil.copytree(fsdp_run / name, run / name)
    as_killed(run / "sft", "checkpoints/checkpoint-30")


@pytest.mark.slow
def test_sft_under_fsdp_resumed_from_a_checkpoint_ends_where_it_would_have(fsdp_run: Path, tmp_path: Path) -> None:
    # The checkpoints of a sharded run are FSDP's (the trainable weights gathered, the optimizer's state, each
    # process's random state): a run killed after step 20's resumes from it and ends with the same adapter. Step 20
    # lies inside an epoch (6 steps each): before, on several processes (DDP too) the rest of that epoch came in
    # epoch 0's order, and the adapter ended 0.0026 away (`batch_order.SeededRebalance.get_resumed_dataloader`).
    run = tmp_path / "run"
    _killed_after_step_20(fsdp_run, run)
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "--resume", config=FSDP,
                   program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    assert "checkpoint-10/" not in done.stderr and "checkpoint-30/" in done.stderr  # it trained steps 21-30 only
    assert same_tensors(tensors(run / "sft" / "adapter" / ADAPTER), tensors(fsdp_run / "sft" / "adapter" / ADAPTER))


ENGINE = "global_step20/"
SAVED_FILES = {  # what each launch of two processes leaves in a checkpoint beside the adapter (DeepSpeed 0.19.8)
    "FSDP": ("pytorch_model_fsdp.bin", "optimizer.bin"),
    "DEEPSPEED": ("latest", ENGINE, *(f"{ENGINE}{name}" for name in (
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"))),
    "DEEPSPEED_ZERO3": ("latest", ENGINE, *(f"{ENGINE}zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"
                                            for rank in (0, 1) for kind in ("model", "optim"))),
    None: ("optimizer.pt",),
}


def _checkpoint(folder: Path, saved: str | None) -> Path:
    checkpoint = folder / "checkpoint-20"
    checkpoint.mkdir()
    for name in ("adapter_model.safetensors", "trainer_state.json", *SAVED_FILES[saved]):
        (checkpoint / name).mkdir() if name.endswith("/") else (checkpoint / name).write_text("")
    return checkpoint


@pytest.mark.parametrize("saved", list(SAVED_FILES))
@pytest.mark.parametrize("launch", list(SAVED_FILES))
def test_a_resume_under_another_sharding_is_one_line(saved: str | None, launch: str | None, tmp_path: Path) -> None:
    # A DeepSpeed checkpoint (ZeRO-3, on two processes) resumed on one process went on silently with a new optimizer:
    # it has no optimizer.pt, and transformers skips what it does not find. The other mismatches were tracebacks.
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.train.stage import check_checkpoint_sharding

    checkpoint = _checkpoint(tmp_path, saved)
    if saved == launch:
        check_checkpoint_sharding(str(checkpoint), launch, 2)
        return
    with pytest.raises(UserError) as error:
        check_checkpoint_sharding(str(checkpoint), launch, 2)
    said = str(error.value)
    assert said.startswith(f"--resume: {checkpoint} was saved by ") and said.endswith("start the stage again")
    assert {"FSDP": "fsdp.yaml", "DEEPSPEED": "zero2.yaml", "DEEPSPEED_ZERO3": "the ZeRO-3 config",
            None: "without FSDP or DeepSpeed"}[saved] in said


@pytest.mark.parametrize("saved", ["DEEPSPEED", "DEEPSPEED_ZERO3"])
def test_a_deepspeed_checkpoint_resumes_on_the_processes_it_was_split_over(saved: str, tmp_path: Path) -> None:
    # DeepSpeed refused in a traceback: "Automatic adjustment of ZeRO's optimizer state partitioning with a new
    # world size is not currently supported".
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.train.stage import check_checkpoint_sharding

    checkpoint = _checkpoint(tmp_path, saved)
    with pytest.raises(UserError, match="saved by 2 processes, and DeepSpeed cannot split its optimizer state over 4: "
                                        "resume it with --num_processes 2"):
        check_checkpoint_sharding(str(checkpoint), saved, 4)


@pytest.mark.slow
def test_a_checkpoint_resumes_only_under_the_sharding_it_was_saved_with(fsdp_run: Path, tmp_path: Path) -> None:
    # FSDP saves its own checkpoint files: resumed without FSDP (one GPU, or DDP) transformers raised "only supported
    # when using PyTorch FSDP", and an FSDP launch resuming another run's checkpoint looked for optimizer.bin; each a
    # traceback. Now one line names the launch to resume under.
    import shutil

    sharded = tmp_path / "sharded"
    _killed_after_step_20(fsdp_run, sharded)
    done = subprocess.run([sys.executable, "-m", "gsm8k_tr", "sft", "--config", str(TINY_RECIPE),
                           f"output_dir={sharded}", "--resume"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "checkpoint-20 was saved by an FSDP launch, and this run is not one" in done.stderr

    plain = tmp_path / "plain"
    for name in ("data", "sft"):  # the same run, its checkpoints saved without FSDP
        shutil.copytree(sharded / name, plain / name, ignore=shutil.ignore_patterns("*fsdp*"))
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={plain}", "--resume", config=FSDP,
                   program=(str(SHARDED_ON_CPU),))
    lines = [line for line in done.stderr.splitlines() if line.startswith("gsm8k-tr sft: error:")]
    # (torchrun's own traceback follows any worker that exits non-zero; the workers print none)
    assert done.returncode != 0 and len(lines) == 2 and "]: Traceback" not in done.stderr, done.stderr[-2000:]
    assert all("checkpoint-20 was saved by a launch without FSDP or DeepSpeed, and this one is an FSDP launch" in line
               for line in lines)


def keeps_the_scripted_best_check(run: Path, config: Path, kind: str) -> Path:
    """GRPO from `run`'s SFT under `config` on two processes (`sharded_on_cpu.py`), its held-out checks scripted to
    be best at step 2 of 3: the manifest names that check, and the saved adapter is the trainer's own checkpoint of
    step 2 (gathered by transformers), not step 3's. Returns the stage folder."""
    scripted = {"0": 0.3, "1": 0.5, "2": 0.8, "3": 0.6}
    done = _launch("grpo", "--config", str(TINY_RECIPE), f"output_dir={run}", "grpo.max_steps=3",
                   "grpo.save_steps=1", "grpo.save_total_limit=10", "eval.every_steps=1", "eval.grpo_keep_best=true",
                   config=config, program=(str(SHARDED_ON_CPU),), env={"SCRIPTED_HELD_OUT": json.dumps(scripted)})
    assert done.returncode == 0, _failure(done)
    folder = run / "grpo"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["distributed_type"] == kind
    assert manifest["held_out_kept"] == {"kept_step": 2, "kept_held_out_accuracy": 0.8, "last_step": 3,
                                         "last_held_out_accuracy": 0.6}
    saved = tensors(folder / "adapter" / ADAPTER)
    assert same_tensors(saved, tensors(folder / "checkpoints" / "checkpoint-2" / ADAPTER))
    assert not same_tensors(saved, tensors(folder / "checkpoints" / "checkpoint-3" / ADAPTER))
    return folder


@pytest.mark.slow
def test_grpo_under_fsdp_checks_its_start_and_keeps_its_best_check(fsdp_run: Path) -> None:
    # The start's check was the sharded model's first forward: under inference_mode, FSDP's gather buffers became
    # inference tensors and the first training step failed writing them. The kept check's adapter is gathered from
    # both processes; before, keep-best was turned off under FSDP.
    folder = keeps_the_scripted_best_check(fsdp_run, FSDP, "FSDP")
    history = json.loads((folder / "log_history.json").read_text())
    assert [e["step"] for e in history if "eval/accuracy" in e] == [0, 1, 2, 3]


@pytest.mark.slow
def test_fsdp_with_a_sharded_state_dict_stops_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    # With SHARDED_STATE_DICT the trainer writes FSDP's pieces and no adapter file: no checkpoint was complete for
    # --resume, GRPO's kept check failed at its first write, and SFT stopped only after training, at its final save.
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP.read_text().replace("fsdp_state_dict_type: FULL_STATE_DICT",
                                               "fsdp_state_dict_type: SHARDED_STATE_DICT"))
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", config=config,
                   program=(str(SHARDED_ON_CPU),))
    lines = [line for line in done.stderr.splitlines() if line.startswith("gsm8k-tr sft: error:")]
    assert done.returncode != 0 and len(lines) == 2 and "]: Traceback" not in done.stderr, done.stderr[-2000:]
    assert all("fsdp_state_dict_type is SHARDED_STATE_DICT" in line for line in lines)
    assert not list((tmp_path / "run" / "sft").glob("checkpoints/checkpoint-*"))
