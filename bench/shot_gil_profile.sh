#!/usr/bin/env bash
# Who holds the GIL during shot detection on a GPU node, per resolution (issue 23's speed target
# below 720p), one device call, from the repository root:
#   carry [".gpujob/tn"] (built by bash bench/shot_speed_bundle.sh: the wheels, py-spy and two sources)
#   SIZES="640x360 1280x720" ROWS="decode_only_48x27 default_plus_transnetv2" bash bench/shot_gil_profile.sh
# Renders the resolution sweep's 30 s edit at each size (bench/transnet_resolution_sweep.sh's recipe),
# then runs bench/profile_shot_gil.py for each row; writes gil_<size>_<row>.json to $OUT.
set -uo pipefail
VC_WHEELS=/nonexistent source bench/device_setup.sh
mkdir -p /tmp/site
[ -x /tmp/site/bin/py-spy ] || python3 -c "import tarfile; tarfile.open('.gpujob/tn/site.tar.xz').extractall('/tmp/site')" || exit 2
export PYTHONPATH=$PYTHONPATH:/tmp/site
OUTDIR=${OUT:-/tmp/gil-out}
mkdir -p "$OUTDIR"
for size in ${SIZES:-640x360 1280x720}; do
    video=/tmp/sweep/$size/edited_000.mp4
    [ -f "$video" ] || python3 bench/make_edited_footage.py --sources .gpujob/tn/*.mp4 \
        --minutes 0.5 --video-minutes 0.5 --size "$size" --out "/tmp/sweep/$size" \
        > "/tmp/sweep-$size.log" 2>&1 || { tail -5 "/tmp/sweep-$size.log"; continue; }
    for row in ${ROWS:-decode_only_48x27 transnetv2 default default_plus_transnetv2}; do
        python3 bench/profile_shot_gil.py --video "$video" --row "$row" --seconds "${SECONDS_EACH:-8}" \
            --py-spy /tmp/site/bin/py-spy ${EXTRA:-} --out "$OUTDIR/gil_${size}_${row}${TAG:-}.json" > /dev/null \
            || echo "profile failed: $size $row"
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], d['row'], d['frames_per_s'], \
d['sampled'], d['gil_share'], 'cpu_ms', d['cpu_ms_per_frame'], d['knobs'], d['batch_times'], d['by_thread'])" \
            "$OUTDIR/gil_${size}_${row}${TAG:-}.json" "$size${TAG:-}" || true
    done
done
