#!/usr/bin/env bash
# Shot detection speed with glibc's malloc told to keep freed memory (no fresh pages, so no page
# faults, for each frame's arrays), against the default, interleaved, on one machine: from the
# repository root, after bench/shot_speed_ab.sh (which renders the edits and unpacks the carry):
#   SIZES="640x360 960x540" bash bench/shot_malloc_knob.sh
# Writes $OUT/shot_malloc_knob.json: bench/bench_transnet_gpu.py's JSON of each run, keyed malloc_{default,keep}{1,2}_<size>.
set -uo pipefail
VC_WHEELS=/nonexistent source bench/device_setup.sh
export PYTHONPATH=$PYTHONPATH:/tmp/site
OUTDIR=${OUT:-/tmp/ab-out}
KEEP=(env MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=268435456)
for size in ${SIZES:-640x360 960x540}; do
    video=/tmp/sweep/$size/edited_000.mp4
    for round in 1 2; do
        for mode in default keep; do
            run=(); [ $mode = keep ] && run=("${KEEP[@]}")
            "${run[@]}" python3 bench/bench_transnet_gpu.py --video "$video" --repeat 2 \
                --only decode_only_48x27,default_plus_transnetv2,default --out "$OUTDIR/malloc_${mode}${round}_$size.json" \
                > /dev/null || echo "bench failed: $mode $size"
            python3 -c "import json,sys; d=json.load(open(sys.argv[1])); f=d['frames_per_s']; b=f['decode_only_48x27']; \
print(sys.argv[2], {k: round(v / b, 3) for k, v in f.items()}, round(b), d.get('cpu_ms_per_frame'))" \
                "$OUTDIR/malloc_${mode}${round}_$size.json" "$mode$round $size" || true
        done
    done
done
# one file back (the device returns at most 8)
python3 - "$OUTDIR" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = sorted(out.glob("malloc_*.json"))
(out / "shot_malloc_knob.json").write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in parts}, indent=1))
for p in parts:
    p.unlink()
PY
