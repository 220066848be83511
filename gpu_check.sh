#!/usr/bin/env bash
# The GPU checks in one run (about 7 minutes on one H200: an estimate until it has run on one): the CUDA
# tests, bench.py's figures for the paper preset (bf16 autocast; batch 32 and 128; eager, then torch.compile),
# whether the data path or the model bounds training (bench.py --dataset),
# a few hundred training steps of the paper preset under torchrun (NCCL, bf16), and 1-step sampling of 1,000
# images from that run.
#
#     bash gpu_check.sh                                   # figures and logs in gpu_check/ (or in $OUT)
#     PRESET=tiny BATCHES=8 STEPS=6 N=16 DEVICE=cpu bash gpu_check.sh   # the same plumbing, small, on CPU
#
# PART=gen runs instead the experiment the CPU cannot: the generation preset (configs/shapes_gen.py) with a larger
# hyper-network, its schedule scaled by GEN_SCALE, stopped at GEN_MINUTES, then its 1- and 2-step samples scored in
# shape features (recall: docs/generation.md) and drawn as grids (about 8 minutes; its own call):
#
#     PART=gen bash gpu_check.sh                          # GEN_PRESETS="small", batch 64, GEN_SCALE 0.5
#     PART=gen GEN_PRESETS="tiny small" GEN_MINUTES=4 bash gpu_check.sh   # the shipped size beside it
#     PART=gen GEN_PRESETS=tiny GEN_BATCH=8 GEN_SCALE=0.01 GEN_N=32 DEVICE=cpu bash gpu_check.sh   # plumbing, CPU
#
# Every figure is also in the JSON files it writes; gpu_check.log holds the whole output.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-gpu_check}
PRESET=${PRESET:-paper}
BATCHES=${BATCHES:-32 128}   # bench.py batches; the training run uses the last
STEPS=${STEPS:-300}          # training steps, the first third in the ETS warm-up
N=${N:-1000}                 # 1-step samples
DEVICE=${DEVICE:-cuda}
PART=${PART:-checks}         # checks | gen
GEN_PRESETS=${GEN_PRESETS:-small}
GEN_BATCH=${GEN_BATCH:-64}
GEN_SCALE=${GEN_SCALE:-0.5}  # the preset's step counts times this (at 4x its batch: 2x the images it sees)
GEN_MINUTES=${GEN_MINUTES:-6}   # per preset: train.py stops and checkpoints here whatever the step
GEN_N=${GEN_N:-500}          # samples scored per step count
GEN_ARGS=${GEN_ARGS:-}       # more train.py options for the generation runs, e.g. "--stage0_lr 3e-4 --compile true"
case $PART in checks|gen) ;; *) echo "PART=$PART: use PART=checks (the default) or PART=gen"; exit 2 ;; esac
B=${BATCHES##* }             # the largest batch: the training run and the compiled bench use it
EVERY=$((STEPS / 6 > 0 ? STEPS / 6 : 1))   # ECT stage length and log interval
RUN=$(mktemp -d)             # the training run's checkpoint stays out of $OUT (only a few files come back)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=0
check() { "$@" || { echo "FAILED ($?): $*"; failed=1; }; }   # a failed check does not stop the later ones

gen() {   # the generation preset with each of GEN_PRESETS: schedule scaled by GEN_SCALE, samples scored and drawn
    # the preset's own step counts, scaled (so a change to configs/shapes_gen.py carries over)
    schedule=$(python -c "import train; c = train.parse_config(['--config', 'shapes_gen'])
keys = 'warmup_iters ect_stage0 stage0_decay guide_step ect_d max_iters'.split()
s = {k: max(1, round(c[k] * $GEN_SCALE)) for k in keys}
s.update(log_interval=s['ect_d'], sample_interval=s['max_iters'], ckpt_interval=s['max_iters'])
print(' '.join(f'--{k} {v}' for k, v in s.items()))")
    for p in $GEN_PRESETS; do
        echo "== generation preset, $p model, batch $GEN_BATCH, $schedule, at most $GEN_MINUTES min"
        rm -rf "$RUN/$p"
        check python train.py --config shapes_gen --preset "$p" --device "$DEVICE" --batch_size "$GEN_BATCH" \
            $schedule --max_minutes "$GEN_MINUTES" --num_workers 4 --out_dir "$RUN/$p" $GEN_ARGS
        check cp "$RUN/$p/log.jsonl" "$OUT/gen_${p}_log.jsonl"
        for k in 1 2; do
            check python fid.py --ckpt "$RUN/$p/ckpt.pt" --device "$DEVICE" --n "$GEN_N" --steps $k \
                --features shapes --ref test --json "$OUT/gen_${p}_${k}step.json"
            check python sample.py --ckpt "$RUN/$p/ckpt.pt" --device "$DEVICE" --steps $k --n 64 \
                --out "$OUT/gen_${p}_${k}step.png"
        done
    done
}

checks() {
    echo "== CUDA tests (skipped without a GPU) and the fast-path tests"
    check python -m pytest -q -rs tests/test_cuda.py tests/test_fast_paths.py

    echo "== bench.py, $PRESET preset, 32^2"
    for b in $BATCHES; do
        check python bench.py --preset "$PRESET" --batch "$b" --device "$DEVICE" --json "$OUT/bench_b$b.json"
    done

    echo "== data-bound or model-bound: the shapes pipeline with 0 and 4 workers next to the step on its batches"
    check python bench.py --preset "$PRESET" --batch "$B" --device "$DEVICE" --dataset shapes --workers 0,4 \
        --loop_workers 4 --data_steps 10 --json "$OUT/bench_data_b$B.json"
    check python -c "import json; d = json.load(open('$OUT/bench_data_b$B.json')); m = d['train_img_per_s']; \
w = d['data_samples_per_s_4_workers']; print(f'model {m:.0f} img/s, data with 4 workers {w:.0f} img/s: ' + \
('data-bound' if w < m else 'model-bound') + f', loop at {d[\"loop_over_model\"]:.2f} of the model-only step')"

    echo "== train.py, $PRESET preset on shapes 32^2, $STEPS steps at batch $B, torchrun"
    gpus=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
    check python -m torch.distributed.run --nproc_per_node="$gpus" train.py --dataset shapes --preset "$PRESET" \
        --device "$DEVICE" --batch_size "$B" --max_iters "$STEPS" --warmup_iters $((STEPS / 3)) \
        --ect_d "$EVERY" --lr 1e-4 --lr_full 0 --lambda_recon 1 --ema_decay 0.999 \
        --max_minutes 0 --log_interval "$EVERY" --sample_interval "$STEPS" \
        --ckpt_interval "$STEPS" --out_dir "$RUN"
    check cp "$RUN/log.jsonl" "$OUT/train_log.jsonl"

    echo "== 1-step sampling of $N images (samples/s in the JSON)"
    check python fid.py --ckpt "$RUN/ckpt.pt" --device "$DEVICE" --n "$N" --steps 1 --features pixels --ref test \
        --json "$OUT/sample_1step.json"

    echo "== bench.py with torch.compile (inductor)"
    check python bench.py --preset "$PRESET" --batch "$B" --device "$DEVICE" --compile \
        --json "$OUT/bench_compile_b$B.json"
    echo "== the same with the token-grid conv (--token_conv 3: depthwise convs inside the feed-forwards)"
    check python bench.py --preset "$PRESET" --batch "$B" --device "$DEVICE" --compile --token_conv 3 \
        --json "$OUT/bench_compile_tokenconv_b$B.json"
}

{
    date
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
    if [ "$PART" = gen ]; then gen; else checks; fi
    date
    rm -rf "$RUN"
    if [ "$failed" = 1 ]; then echo "gpu_check: some checks FAILED (above)"; exit 1; fi
    echo "gpu_check: all checks passed"
} 2>&1 | tee "$OUT/gpu_check.log"
