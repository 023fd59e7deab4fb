#!/usr/bin/env bash
# Shot detection at 360p under knobs that reach the decoding child too (bench/child_knobs/), interleaved on
# one machine: bench/bench_transnet_gpu.py a variant a run. Needs /tmp/vcpkg and
# /tmp/site and the edit (bench/shot_speed_ab.sh with MINUTES=2 sets them up), from the repository root:
#   VARIANTS="base c_sc2=VC_KNOB_CHILD_SCALERS:2 cv2_1=VC_KNOB_CV2:1" bash bench/shot_child_knobs.sh
# (name=ENV:value+ENV:value; "base": none). Writes $OUT/child_knobs.json, keyed knob_<name>_<round>.
set -uo pipefail
here=$(pwd); OUTDIR=${OUT:-/tmp/knobs-out}; mkdir -p "$OUTDIR"
VIDEO=${VIDEO:-/tmp/sweep/640x360-2min/edited_000.mp4}
ROWS=${ROWS:-decode_only_48x27,default_plus_transnetv2}
DEFAULT_VARIANTS="base c_sc2=VC_KNOB_CHILD_SCALERS:2 c_sc6=VC_KNOB_CHILD_SCALERS:6 \
c_dt8=VC_KNOB_CHILD_DECODE_THREADS:8 cv2_1=VC_KNOB_CV2:1"  # the 2026-12-07 run's (docs/benchmarks.md)
VARIANTS=${VARIANTS:-$DEFAULT_VARIANTS}
for round in $(seq 1 "${ROUNDS:-2}"); do
    for v in $VARIANTS; do
        name=${v%%=*}; knobs=""; [ "$v" = "$name" ] || knobs=${v#*=}
        envs=(VC_KNOBS_ON=1)
        for kv in ${knobs//+/ }; do envs+=("${kv%%:*}=${kv#*:}"); done
        env "${envs[@]}" PYTHONPATH="$here/bench/child_knobs:/tmp/vcpkg:/tmp/site" \
            python3 bench/bench_transnet_gpu.py --video "$VIDEO" --repeat "${REPEAT:-3}" --only "$ROWS" \
            --out "$OUTDIR/knob_${name}_$round.json" > /dev/null \
            || { echo "failed: $name $round"; continue; }
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); f=d['frames_per_s']; b=f['decode_only_48x27']; \
c=d.get('cpu_ms_per_frame', {}); print(sys.argv[2], round(b), \
{k: (round(v), round(v / b, 3), c.get(k)) for k, v in f.items()}, open('/proc/loadavg').read().split()[0])" \
            "$OUTDIR/knob_${name}_$round.json" "$name $round"
    done
done
python3 - "$OUTDIR" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = sorted(out.glob("knob_*.json"))
(out / "child_knobs.json").write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in parts}, indent=1))
for p in parts:
    p.unlink()
PY
