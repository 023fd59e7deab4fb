#!/usr/bin/env bash
# One short device call (about 90 s), carry [".gpujob/call1"] (bash bench/gpu_job_bundle.sh builds it):
#     bash bench/device_probe_decode.sh
# 1. NVDEC against software decoding, plane by plane and through to_rgb (bench/probe_nvdec_frames.py),
#    on 30 s of the GPU job's edited 720p footage and on bikes.mp4: whether the hardware decoder's
#    frames are the software decoder's (the question before NVDEC can take the source decodes).
# 2. bench/bench_decode_threads.py on the node's CPU: one decoder thread against FFmpeg's frame
#    threads (16 there), the stages' CPU with filters.source_decode_threads 0 and 1.
# Writes $OUT/probe_nvdec_*.json and $OUT/decode_threads_node.json (errors beside them).
set -u
lscpu | grep -i "model name"; nproc
mkdir -p /tmp/site
python3 -c "
import tarfile,time; t=time.time()
with tarfile.open('.gpujob/call1/site1.tar.xz','r:xz') as tar: tar.extractall('/tmp/site', filter='fully_trusted')
print('unpacked', round(time.time()-t,1))"
VC_WHEELS=/nonexistent source bench/device_setup.sh
export PYTHONPATH=$PYTHONPATH:/tmp/site
R=$(pwd)
python3 bench/make_edited_footage.py --sources .gpujob/call1/sources/bikes.mp4 .gpujob/call1/sources/bigbuckbunny.mp4 --minutes 0.5 --video-minutes 0.5 --out /tmp/pfoot > /tmp/pfoot.log 2>&1 || tail -5 /tmp/pfoot.log
cd /tmp
for v in /tmp/pfoot/edited_000.mp4 $R/.gpujob/call1/sources/bikes.mp4; do
  timeout 90 python3 $R/bench/probe_nvdec_frames.py --video $v --frames 300 --out $OUT/probe_nvdec_$(basename $v .mp4).json > /dev/null 2>$OUT/probe_err_$(basename $v .mp4).txt; echo "probe $v rc=$?"
done
cd $R/bench && timeout 150 python3 bench_decode_threads.py /tmp/pfoot/edited_000.mp4 --rounds 2 --set filters.recipe=recipes/keep_moving_v1.yaml --out $OUT/decode_threads_node.json > /dev/null 2>$OUT/decode_threads_err.txt; echo "decode threads rc=$?"
date -u
