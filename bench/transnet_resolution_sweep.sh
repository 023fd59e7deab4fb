#!/usr/bin/env bash
# Shot detection speed against decoding alone at several resolutions on a GPU node (issue 23's
# "at least 70% of decode-only on the GPU path"), one device call, from the repository root:
#   carry [".gpujob/tn"] (bash bench/shot_speed_bundle.sh; the 2026-12-05 sweep's carry also held
#   transnetv2_test.mp4, a third source and the 160x90 row: copy it in if the carry's size allows)
#   bash bench/transnet_resolution_sweep.sh          (SIZES="640x360 960x540": those only, no 160x90)
# Renders a 30 s edit of the same sources at each size (bench/make_edited_footage.py, x264 veryfast,
# the GPU-node job's footage recipe), then runs bench/bench_transnet_gpu.py on each and on the
# 160x90 test video; writes transnet_sweep_<size>.json to $OUT.
set -uo pipefail
VC_WHEELS=/nonexistent source bench/device_setup.sh
mkdir -p /tmp/site
python3 -c "import tarfile; tarfile.open('.gpujob/tn/site.tar.xz').extractall('/tmp/site')" || exit 2
export PYTHONPATH=$PYTHONPATH:/tmp/site
OUTDIR=${OUT:-/tmp/sweep-out}
mkdir -p "$OUTDIR"
ROWS=decode_only_48x27,transnetv2,default_plus_transnetv2,default
for size in ${SIZES:-640x360 960x540 1280x720 320x180}; do  # the sizes not measured before first
    python3 bench/make_edited_footage.py --sources .gpujob/tn/*.mp4 --minutes 0.5 --video-minutes 0.5 --size "$size" --out "/tmp/sweep/$size" \
        > "/tmp/sweep-$size.log" 2>&1 || { tail -5 "/tmp/sweep-$size.log"; continue; }
    python3 bench/bench_transnet_gpu.py --video "/tmp/sweep/$size/edited_000.mp4" --repeat 2 --only "$ROWS" \
        --out "$OUTDIR/transnet_sweep_$size.json" > /dev/null || echo "bench failed at $size"
done
[ -n "${SIZES:-}" ] || [ ! -f .gpujob/tn/transnetv2_test.mp4 ] || python3 bench/bench_transnet_gpu.py --video .gpujob/tn/transnetv2_test.mp4 --repeat 2 --only "$ROWS" \
    --out "$OUTDIR/transnet_sweep_160x90.json" > /dev/null || echo "bench failed at 160x90"
python3 - "$OUTDIR" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("transnet_sweep_*.json")):
    d = json.loads(p.read_text()); f = d["frames_per_s"]; base = f["decode_only_48x27"]
    print(p.name, d["width"], d["height"], {k: round(v / base, 2) for k, v in f.items()}, round(base))
PY
