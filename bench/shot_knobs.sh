#!/usr/bin/env bash
# Shot detection speed against decoding alone under process-wide knobs, interleaved, on one machine:
# Python's GIL switch interval (sys.setswitchinterval), the scaler pool's threads
# (ingest/scale_ahead.SCALER_THREADS) and glibc malloc keeping freed memory. From the repository
# root, after bench/shot_speed_ab.sh (which renders the edits and unpacks the carry):
#   SIZES=640x360 KNOBS="base si=0.001 si=0.0002 threads=6 keep dthreads=4" bash bench/shot_knobs.sh
# (dthreads=N: the detection stream's FFmpeg decoder threads, ingest/scaled_stream.DECODE_THREADS;
#  ahead=N: batches submitted ahead of the reading thread, ingest/detect_batches.AHEAD)
# The edits: bench/shot_speed_ab.sh renders them, or on a fresh machine
#   VC_WHEELS=/nonexistent source bench/device_setup.sh; mkdir -p /tmp/site
#   python3 -c "import tarfile; tarfile.open('.gpujob/tn/site.tar.xz').extractall('/tmp/site')"
#   PYTHONPATH=/tmp/vcpkg:/tmp/site python3 bench/make_edited_footage.py --sources .gpujob/tn/*.mp4 \
#       --minutes 0.5 --video-minutes 0.5 --size 640x360 --out /tmp/sweep/640x360
# Writes $OUT/shot_knobs.json: bench/bench_transnet_gpu.py's JSON of each run, keyed <knob>_r<round>_<size>.
set -uo pipefail
VC_WHEELS=/nonexistent source bench/device_setup.sh
export PYTHONPATH=$PYTHONPATH:/tmp/site
OUTDIR=${OUT:-/tmp/ab-out}
mkdir -p "$OUTDIR/knobs"
for size in ${SIZES:-640x360}; do
    video=/tmp/sweep/$size/edited_000.mp4
    for round in 1 2; do
        for knob in ${KNOBS:-base si=0.001 si=0.0002 threads=6 keep}; do
            si=0.005 threads=0 dthreads=0 ahead=0 env=()
            case $knob in
                si=*) si=${knob#si=} ;;
                threads=*) threads=${knob#threads=} ;;
                dthreads=*) dthreads=${knob#dthreads=} ;;
                ahead=*) ahead=${knob#ahead=} ;;
                keep) env=(MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=268435456) ;;
            esac
            out="$OUTDIR/knobs/${knob}_r${round}_$size.json"
            env "${env[@]}" python3 -c "
import sys; sys.setswitchinterval($si); sys.path[0] = 'bench'  # not '': the checkout's vidcorpus/ lacks the stages
from vidcorpus.ingest import detect_batches, scale_ahead, scaled_stream
if $threads: scale_ahead.SCALER_THREADS = $threads
if $dthreads: scaled_stream.DECODE_THREADS = $dthreads
if $ahead: detect_batches.AHEAD = $ahead
import bench_transnet_gpu
bench_transnet_gpu.main(['--video', '$video', '--repeat', '2', '--only',
                         'decode_only_48x27,default_plus_transnetv2,default', '--out', '$out'])" > /dev/null \
                || { echo "bench failed: $knob $size"; continue; }
            python3 -c "import json,sys; d=json.load(open(sys.argv[1])); f=d['frames_per_s']; b=f['decode_only_48x27']; \
print(sys.argv[2], {k: round(v / b, 3) for k, v in f.items()}, round(b), d.get('cpu_ms_per_frame'))" "$out" "$knob r$round $size"
        done
    done
done
python3 - "$OUTDIR" <<'PY'
import json, pathlib, shutil, sys
out = pathlib.Path(sys.argv[1])
parts = sorted((out / "knobs").glob("*.json"))
(out / "shot_knobs.json").write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in parts}, indent=1))
shutil.rmtree(out / "knobs")
PY
