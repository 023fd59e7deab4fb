#!/usr/bin/env bash
# Issue 8's step target on one GPU, every configuration a fresh process, in this order: the reference
# (diffusers eager step, batch 2, 30 steps), our loop compiled with CUDA graphs at batch 3, the
# reference again, our loop with inductor's channels-last layout forced (batch 2, then batch 3), the
# reference a third time. The references bracket ours, so a slow or fast machine shows in all of them.
# Results (JSON lines / JSON / logs) go to $1; "done" is touched at the end.
#     source bench/device_setup.sh && bash bench/train_step_matrix.sh /tmp/train-matrix
set -u
out=${1:-/tmp/train-matrix}
mkdir -p "$out"
ref() { python3 bench/bench_unet_step.py --batches 2 --steps 30 --ema off >"$out/ref_$1.jsonl" 2>"$out/ref_$1.err"; }
ours() {
    local name=$1; shift
    timeout "${OURS_TIMEOUT_S:-1200}" python3 bench/bench_train_data.py --size full --workers 0 --only synthetic \
        --compile --compile-mode reduce-overhead --steps 30 --log-every 5 --json "$out/$name.json" "$@" \
        >"$out/$name.log" 2>&1
    echo "$name exit $?" >>"$out/status"
}
date -u +%FT%TZ >"$out/started"
ref 1
ours compiled_cg_b3 --batch 3
ref 2
TORCHINDUCTOR_FORCE_LAYOUT_OPT=1 ours compiled_cg_layout_b2 --batch 2
ref 3
TORCHINDUCTOR_FORCE_LAYOUT_OPT=1 ours compiled_cg_layout_b3 --batch 3
ref 4
touch "$out/done"
