#!/bin/bash
# The GPU measurements still open, in the order they matter, each part under its own time limit:
#   bash benchmarks/gpu_session.sh check                   # about 4 minutes on one GPU: every part passing
#   bash benchmarks/gpu_session.sh compiled-step grouped shapes   # about 6 minutes
#   bash benchmarks/gpu_session.sh sft-compiled            # after `shapes`, on the same machine, if time is left
#   bash benchmarks/gpu_session.sh sft-split               # SFT's 32 examples a step in 1, 2, 4 or 8 micro-batches
#   CPU=1 OUT=/tmp/x bash benchmarks/gpu_session.sh check rows compiled-step grouped shapes   # a dry run on a CPU
#   BUDGET=540 bash benchmarks/gpu_session.sh check sft-split grouped compiled-step   # one call: skips what won't fit
#   BUDGET=540 bash benchmarks/gpu_session.sh ways held-out fsdp profile   # next: which rollout path is fastest in
#                  GRPO, the held-out check under it, FSDP on the GPU, then why compiled-step's GRPO was slower (as
#                  BUDGET leaves time)
# Measured on 2026-12-04 (docs/benchmarks.md, "GPU"): check rows, then nan grpo (2 and 3 minutes on an H200);
# later check sft-split (7 minutes), then compiled-step grouped (grouped's compiled-step half outlasted its limit).
# Run in the project's root. On a GPU machine without a package index, first run `bash ../shared/gpu/wheels.sh`
# and `.venv/bin/python benchmarks/gpu_wheels.py` (the wheels' whole closure) where there is one and take `.whl/`,
# `.shared-data/` and `.models/` along (`mkdir -p .models && cp -r ~/.cache/gsm8k-tr/{demo,tiny}-gpt2-vN .models/`
# with N builtin.BUILD_VERSION, older builds left out: the builtin models, built; about 46 MB in all with the wheels):
# the wheels go into /tmp/site and the machine's own torch stays. One log per part goes to $OUT (default
# /tmp/out), and summary.txt says when each part started and how it ended. `check` keeps its work folder
# (/tmp/gc) for the parts after it, which reuse its model.
#   check          gpu_check, with `decoding: compiled-step` beside the default decodings
#   ways           gpu_check's GRPO and evaluation decoded compiled, compiled-step, and compiled-step with grouped
#                  attention off; GRPO with transformers' continuous batching (`check` first: its model and SFT;
#                  else SFT runs here too)
#   compiled-step  benchmarks/compiled_step.py: the whole decoding step compiled against `compiled`
#   rows           benchmarks/generation_rows.py: 64 rows decoded together against 128 and 256 (steps_per_generation)
#   grouped        benchmarks/grouped_attention.py: each group's prompt read once, eager and compiled-step
#   shapes         benchmarks/gpu_shapes.py: padding to 64, the stop check, SFT's batch order
#   sft-compiled   benchmarks/gpu_shapes.py: SFT under torch.compile, against `shapes`' eager run padded to 64 (its
#                  work folder /tmp/shapes; the SFT step was host-bound on the H200, which compiling may cut)
#   sft-split      benchmarks/gpu_shapes.py: one SFT step's 32 examples as 32 x 1, 16 x 2, 8 x 4 and 4 x 8 (auto takes
#                  the largest that fits on a GPU; on a CPU 4 rows, as 32 x 1 ran at about half the speed of 8 x 4)
#   profile        benchmarks/profile_steps.py: compiled-step at the rollouts' shape, grouped and per row, under
#                  torch.profiler: which kernels a step's time goes to (SFT and compiled decoding: --parts sft ...)
#   nan            benchmarks/attention_nan.py: a left-padded batch's gradients at lengths of 64 and 0 modulo 128
#   grpo           gpu_check's SFT and GRPO parts alone (GRPO needs SFT's model), GRPO also with 128 completions a
#                  call (two optimizer steps' worth)
#   held-out       gpu_check's GRPO for 2 steps, and again with the in-training held-out check after each step (on
#                  in the real recipes; gpu_check's other GRPO runs leave it off), decoded as the rollouts are
#   fsdp           the tiny pipeline under recipes/accelerate/fsdp.yaml, GRPO's held-out checks and keep-best on, eager: one
#                  process on the GPU (NCCL; summary.txt counts PyTorch's warnings of a process group left at exit);
#                  on a CPU two processes, sharded over gloo (tests/train/sharded_on_cpu.py)
set -u
ROOT=$PWD; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if [ -n "${CPU:-}" ]; then
  PY=${PY:-$ROOT/.venv/bin/python}; cpu=--cpu; scale=4  # the CPU is slower: longer limits
else
  PY=${PY:-python3}; cpu=; scale=1
  [ -d /tmp/site/trl ] || [ ! -d .whl ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$ROOT/src
fi
# A wheel set that cannot import on the GPU machine stops here, in seconds, with the requirement it misses: in a dry
# run by the wheels' own metadata, on the GPU by what its Python sees (benchmarks/gpu_wheels.py).
if [ -d .whl ]; then
  check=(--check-installed /tmp/site); [ -n "${CPU:-}" ] && check=(--check .whl)
  "$PY" benchmarks/gpu_wheels.py "${check[@]}" 2>&1 | tee -a "$OUT/summary.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "wheels rc=1" | tee -a "$OUT/summary.txt"; exit 1; }
fi
[ -d .shared-data ] && [ ! -e ../shared/data ] && mkdir -p ../shared && ln -s "$ROOT/.shared-data" ../shared/data
[ -d .models ] && export GSM8K_TR_CACHE=$ROOT/.models
t0=$(date +%s); stamp() { echo "== $1 at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"; }
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  "$PY" -c "import torch,transformers,trl,peft,accelerate;print('torch',torch.__version__,'cuda',torch.cuda.is_available(),'transformers',transformers.__version__,'trl',trl.__version__,'peft',peft.__version__,'accelerate',accelerate.__version__)"
} 2>&1 | tee -a "$OUT/summary.txt"
model=/tmp/gc/model; [ -d $model ] || model=  # the parts after `check` reuse its model
stop=stop; [ -n "$cpu" ] && stop=  # the stop check needs a GPU's events
medium() { if [ -n "$cpu" ]; then echo --cpu; elif [ -n "$model" ]; then echo --model $model; fi; }
# Each part's time limit on a GPU (a CPU's is `scale` times it). With BUDGET (seconds for the whole call, counted
# from the script's start), a part that could outlast what is left is skipped with a line, so one call can name
# every part still wanted and end inside the device's limit: BUDGET=540 bash benchmarks/gpu_session.sh check ...
declare -A most=([check]=290 [ways]=330 [compiled-step]=120 [rows]=150 [grouped]=150 [shapes]=150 [sft-compiled]=200
                 [sft-split]=200 [nan]=60 [grpo]=190 [profile]=150 [held-out]=150 [fsdp]=90)
for part in "$@"; do
  need=$(( ${most[$part]:-0} * scale ))
  if [ -n "${BUDGET:-}" ] && [ $(( SECONDS + need )) -gt "$BUDGET" ]; then
    echo "$part skipped: it may take $need s, and $(( BUDGET - SECONDS )) s of BUDGET are left" \
      | tee -a "$OUT/summary.txt"
    continue
  fi
  stamp "$part"; case $part in
  check) rm -rf /tmp/gc; timeout $need "$PY" benchmarks/gpu_check.py $cpu --no-vllm --keep /tmp/gc \
           --also-decodings compiled-step > "$OUT/check.txt" 2>&1
         rc=$?; cp /tmp/gc/gpu_check.json "$OUT/" 2>/dev/null; [ -d /tmp/gc/model ] && model=/tmp/gc/model
         (exit $rc) ;;
  ways) sft=sft; [ -d /tmp/gc/sft ] && sft=  # check's SFT model, when it ran
        timeout $need "$PY" benchmarks/gpu_check.py $cpu --no-vllm --keep /tmp/gc --parts $sft grpo eval --steps 6 \
          --also-decodings compiled-step compiled-step-per-row continuous-batching > "$OUT/ways.txt" 2>&1
        rc=$?; cp /tmp/gc/gpu_check.json "$OUT/gpu_check_ways.json" 2>/dev/null
        [ -d /tmp/gc/model ] && model=/tmp/gc/model; (exit $rc) ;;
  compiled-step) timeout $need "$PY" benchmarks/compiled_step.py $(medium) > "$OUT/compiled-step.txt" 2>&1 ;;
  rows) timeout $need "$PY" benchmarks/generation_rows.py $(medium) \
          $([ -n "$cpu" ] && echo --rows 16 32 --new-tokens 32) > "$OUT/rows.txt" 2>&1 ;;
  grouped) shape=${cpu:---gpt2-medium}; [ -n "$cpu" ] && shape="--cpu --new-tokens 32"  # on a CPU the demo model
           { timeout $(( 60 * scale )) "$PY" benchmarks/grouped_attention.py $shape --rounds 2 \
               && timeout $(( need - 60 * scale )) "$PY" benchmarks/grouped_attention.py $shape --rounds 2 \
                    --decoding compiled-step
           } > "$OUT/grouped.txt" 2>&1 ;;
  shapes) rm -rf /tmp/shapes  # its eager SFT run is sft-compiled's baseline
          timeout $need "$PY" benchmarks/gpu_shapes.py $(medium) --work /tmp/shapes --parts sft $stop sft-order \
            --order-split 8 4 > "$OUT/shapes.txt" 2>&1 ;;
  sft-compiled) timeout $need "$PY" benchmarks/gpu_shapes.py $(medium) --work /tmp/shapes --parts sft-compiled \
                  > "$OUT/sft-compiled.txt" 2>&1 ;;
  sft-split) timeout $need "$PY" benchmarks/gpu_shapes.py $(medium) --work /tmp/split --parts sft-split \
               --sft-steps $([ -n "$cpu" ] && echo 6 || echo 12) > "$OUT/sft-split.txt" 2>&1 ;;
  nan) timeout $need "$PY" benchmarks/attention_nan.py $([ -n "$cpu" ] && echo --cpu --lengths 64 128 --rows 4) \
         > "$OUT/nan.txt" 2>&1 ;;
  grpo) rm -rf /tmp/gg; timeout $need "$PY" benchmarks/gpu_check.py $cpu --no-vllm --keep /tmp/gg --parts sft grpo \
          --also-generation-batches 128 > "$OUT/grpo.txt" 2>&1
        rc=$?; cp /tmp/gg/gpu_check.json "$OUT/gpu_check_grpo.json" 2>/dev/null; (exit $rc) ;;
  held-out) sft=sft; [ -d /tmp/gc/sft ] && sft=  # check's SFT model, when it ran
            timeout $need "$PY" benchmarks/gpu_check.py $cpu --no-vllm --keep /tmp/gc --parts $sft grpo --steps 2 \
              --held-out 16 > "$OUT/held-out.txt" 2>&1
            rc=$?; cp /tmp/gc/gpu_check.json "$OUT/gpu_check_held_out.json" 2>/dev/null
            [ -d /tmp/gc/model ] && model=/tmp/gc/model; (exit $rc) ;;
  fsdp) launch=(--num_processes 1 -m gsm8k_tr); [ -n "$cpu" ] && launch=(--num_processes 2 tests/train/sharded_on_cpu.py)
        rm -rf /tmp/fsdp; timeout $need "$PY" -m accelerate.commands.launch --config_file recipes/accelerate/fsdp.yaml \
          "${launch[@]}" pipeline --config recipes/tiny.yaml output_dir=/tmp/fsdp eval.every_steps=2 \
          eval.grpo_keep_best=true decoding=eager > "$OUT/fsdp.txt" 2>&1  # eager: no compile time
        rc=$?; echo "process groups left at exit: $(grep -ci 'destroy_process_group\|has NOT been destroyed' \
          "$OUT/fsdp.txt")" | tee -a "$OUT/summary.txt"; (exit $rc) ;;
  profile) timeout $need "$PY" benchmarks/profile_steps.py $(medium) --parts decode-compiled-step \
             $([ -n "$cpu" ] && echo --sequences 16 --new-tokens 24) > "$OUT/profile.txt" 2>&1 ;;
  *) echo "unknown part $part"; false ;;
esac; echo "$part rc=$?" | tee -a "$OUT/summary.txt"; done
stamp end
