# Source this on the GPU machine (the `device` tool), from the repository root:
#     source bench/device_setup.sh
# The project is not pip-installed there: this makes `import vidcorpus...` work by mirroring the
# setuptools package-dir mapping with symlinks, and installs carried wheels from $VC_WHEELS
# (default .whl/, if any) into /tmp/site. Both go on PYTHONPATH.
_vc_root=$(pwd)
rm -rf /tmp/vcpkg && mkdir -p /tmp/vcpkg/vidcorpus
for f in "$_vc_root"/vidcorpus/*; do ln -s "$f" /tmp/vcpkg/vidcorpus/; done
for d in ingest filters captioning shards catalog train; do ln -s "$_vc_root/$d" "/tmp/vcpkg/vidcorpus/$d"; done
export PYTHONPATH=/tmp/vcpkg${PYTHONPATH:+:$PYTHONPATH}
_vc_whl=${VC_WHEELS:-$_vc_root/.whl}
if ls "$_vc_whl"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$_vc_whl"/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
