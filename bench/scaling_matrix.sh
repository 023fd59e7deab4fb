#!/usr/bin/env bash
# Issues 8 and 12: two-GPU scaling of the base trainer on one host (nvidia-h200-x2), each run a fresh
# process, synthetic input (the loop's own step rate), results as JSON and logs in $1:
#   1. DDP eager, batch 2 per GPU, gradients as bucket views in 100 MB buckets (the last measurement,
#      86.8%, used DDP's defaults: 25 MB buckets, gradients copied into them)
#   2. one GPU eager, batch 2 (its reference)
#   3. one GPU compiled with CUDA graphs, batch 3 (the step of the 1.5x target)
#   4. DDP compiled with CUDA graphs, batch 3 per GPU, bucket views, 100 MB buckets (compiling under
#      DDP took over 9 minutes on an H100: dynamo splits the graph at bucket boundaries)
# Run it in the background (setsid) and poll: it outlasts one device call. "done" is touched at the end.
#     source bench/device_setup.sh && (setsid nohup bash bench/scaling_matrix.sh /tmp/scaling >/tmp/scaling.log 2>&1 &)
set -u
out=${1:-/tmp/scaling}
mkdir -p "$out"
common=(--size full --workers 0 --only synthetic --steps 30 --log-every 5)
one() {
    local name=$1; shift
    timeout 1200 python3 bench/bench_train_data.py "${common[@]}" --json "$out/$name.json" "$@" >"$out/$name.log" 2>&1
    echo "$name exit $?" >>"$out/status"
}
two() {
    local name=$1; shift
    timeout 1200 python3 -m torch.distributed.run --nproc_per_node 2 bench/bench_train_data.py "${common[@]}" \
        --json "$out/$name.json" "$@" >"$out/$name.log" 2>&1
    echo "$name exit $?" >>"$out/status"
}
date -u +%FT%TZ >"$out/started"
two ddp_eager_b2_view --batch 2 --parallel ddp --ddp-bucket-view --ddp-bucket-mb 100
one one_eager_b2 --batch 2
one one_compiled_b3 --batch 3 --compile --compile-mode reduce-overhead
two ddp_compiled_b3_view --batch 3 --parallel ddp --ddp-bucket-view --ddp-bucket-mb 100 --compile --compile-mode reduce-overhead
touch "$out/done"
