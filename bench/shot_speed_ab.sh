#!/usr/bin/env bash
# Shot detection speed against decoding alone, the working tree's code against an earlier one, on
# one GPU node in one device call (issue 23's "at least 70% of decode-only on the GPU path"), from
# the repository root:
#   git archive REV ingest vidcorpus bench | xz > bench/_before.tar.xz      (here; untracked, it travels)
#   carry [".gpujob/tn"] (built by bash bench/shot_speed_bundle.sh)
#   BEFORE=bench/_before.tar.xz SIZES="640x360 960x540 1280x720" bash bench/shot_speed_ab.sh
# (MINUTES=2: a 2-minute edit instead of 30 s; REPEAT=N: best of N runs a row, 2 by default; CODES=after:
# the working tree's code alone; GIL_ARGS: more of bench/profile_shot_gil.py's options, e.g. "--child")
# For each size: the resolution sweep's 30 s edit (bench/transnet_resolution_sweep.sh's recipe),
# then bench/bench_transnet_gpu.py's rows with the earlier code, the working tree's, the earlier
# again and the working tree's again (interleaved: the host's state drifts), and a GIL profile of
# default + TransNetV2 with each (bench/profile_shot_gil.py). Writes ab_<code><round>_<size>.json
# and gil_<code>_<size>.json, then merges them into $OUT/shot_speed_ab.json (keyed by those names).
set -uo pipefail
VC_WHEELS=/nonexistent source bench/device_setup.sh  # /tmp/vcpkg: the working tree as vidcorpus
mkdir -p /tmp/site
[ -x /tmp/site/bin/py-spy ] || python3 -c "import tarfile; tarfile.open('.gpujob/tn/site.tar.xz').extractall('/tmp/site')" || exit 2
OUTDIR=${OUT:-/tmp/ab-out}
mkdir -p "$OUTDIR" /tmp/before-tree /tmp/vcbefore/vidcorpus
CODES=${CODES:-before after}
[ "$CODES" = after ] || tar -C /tmp/before-tree -xJf "${BEFORE:?BEFORE=an archive of the earlier code}" || exit 2
# both codes measured by the working tree's script (the rows' setup, e.g. the probe's rotation, alike)
[ "$CODES" = after ] || cp bench/bench_transnet_gpu.py /tmp/before-tree/bench/bench_transnet_gpu.py
for f in /tmp/before-tree/vidcorpus/*; do ln -sfn "$f" /tmp/vcbefore/vidcorpus/; done
for d in ingest filters captioning shards catalog train; do
    [ -e "/tmp/before-tree/$d" ] && ln -sfn "/tmp/before-tree/$d" "/tmp/vcbefore/vidcorpus/$d"
done
AFTER_PATH=/tmp/vcpkg:/tmp/site
BEFORE_PATH=/tmp/vcbefore:/tmp/site
ROWS=${ROWS:-decode_only_48x27,transnetv2,default_plus_transnetv2,default}
here=$(pwd)
MINUTES=${MINUTES:-0.5}  # the edit's length (0.5: the sweep's; longer runs measure steadier on an idle host)
for size in ${SIZES:-640x360 960x540 1280x720}; do
    folder=/tmp/sweep/$size; [ "$MINUTES" = 0.5 ] || folder=/tmp/sweep/$size-${MINUTES}min
    video=$folder/edited_000.mp4
    [ -f "$video" ] || PYTHONPATH=$AFTER_PATH python3 bench/make_edited_footage.py --sources .gpujob/tn/*.mp4 \
        --minutes "$MINUTES" --video-minutes "$MINUTES" --size "$size" --out "$folder" \
        > "/tmp/sweep-$size.log" 2>&1 || { tail -5 "/tmp/sweep-$size.log"; continue; }
    for round in 1 2; do
        for code in $CODES; do
            if [ $code = before ]; then tree=/tmp/before-tree; path=$BEFORE_PATH; else tree=$here; path=$AFTER_PATH; fi
            (cd "$tree" && PYTHONPATH=$path python3 bench/bench_transnet_gpu.py --video "$video" --repeat "${REPEAT:-2}" \
                --only "$ROWS" --out "$OUTDIR/ab_${code}${round}_$size.json" > /dev/null) || echo "bench failed: $code $size"
            python3 -c "import json,sys; d=json.load(open(sys.argv[1])); f=d['frames_per_s']; b=f['decode_only_48x27']; \
print(sys.argv[2], {k: round(v / b, 3) for k, v in f.items()}, round(b))" "$OUTDIR/ab_${code}${round}_$size.json" \
                "$code$round $size" || true
        done
    done
    if [ "$size" = "${GIL_SIZE:-640x360}" ]; then
        for code in $CODES; do
            path=$AFTER_PATH; [ $code = before ] && path=$BEFORE_PATH
            # the profiler is the working tree's script either way: it imports whichever vidcorpus the path gives
            PYTHONPATH=$path python3 bench/profile_shot_gil.py --video "$video" --row default_plus_transnetv2 \
                --seconds 8 --py-spy /tmp/site/bin/py-spy ${GIL_ARGS:-} --out "$OUTDIR/gil_${code}_$size.json" > /dev/null \
                && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], d['frames_per_s'], \
'gil', d['gil_share'], d['by_thread'], d['batch_times'], 'child', {k: d['child'][k] for k in ('gil_share', 'by_thread')} \
if 'child' in d else '')" "$OUTDIR/gil_${code}_$size.json" "gil $code" || echo "profile failed: $code"
        done
    fi
done
# one file back (the device returns at most 8): every result above, by file name
python3 - "$OUTDIR" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = sorted(p for p in out.glob("*.json") if p.name != "shot_speed_ab.json")
(out / "shot_speed_ab.json").write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in parts}, indent=1))
for p in parts:
    p.unlink()
PY
