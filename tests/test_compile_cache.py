"""captioning.compile_cache: torch.compile's cache artifacts written after a warm-up are hot-loaded by
a process with empty local caches (a fresh node), which then compiles from cache; a missing or
broken file only means compiling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from vidcorpus.compile_cache import artifacts_url, load_artifacts
from vidcorpus.config import Config

# One process: hot-load what the file holds, save before compiling, compile a small function with Inductor, save.
PROCESS = """
import json, sys, torch
from torch._dynamo.utils import counters  # the caches' hit and miss counts (test only)
from vidcorpus.compile_cache import load_artifacts, save_artifacts
url = sys.argv[1]
loaded = load_artifacts(url)
before = save_artifacts(url + ".early", loaded)
f = torch.compile(lambda x, y: torch.sin(x) * y + torch.cos(y).sum())
f(torch.randn(16, 16), torch.randn(16, 16))
saved = save_artifacts(url, loaded)
# a partial set (more compiles to come) goes only where there is no file yet
partial_over_a_file = save_artifacts(url, None, partial=True)
partial_where_none = save_artifacts(url + ".partial", None, partial=True)
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    blocked = save_artifacts(url + "/under/a/file.bin")  # its parent is a file: a write that fails
print(json.dumps({"loaded": loaded is not None, "saved_before_compiling": before, "saved": saved,
                  "partial": [partial_over_a_file, partial_where_none],
                  "blocked": [blocked, [str(w.message) for w in caught]], **counters["inductor"]}))
"""


def _process(tmp_path, name: str, url: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"),  # empty local caches
           # Inductor takes the CPU's vector ISA from its flags instead of first building and loading a
           # test library per ISA into that empty folder (about 11 s of g++ a process on 2 cores). Both
           # processes pick the same ISA either way, and those probe builds are never in the artifacts.
           "TORCHINDUCTOR_VEC_ISA_OK": "1"}
    out = subprocess.run([sys.executable, "-c", PROCESS, url], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes compiling with Inductor (about 20 s on 2 cores): started early
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="Inductor on the CPU needs a C++ compiler")
def test_a_fresh_process_compiles_from_the_artifacts_another_process_saved(tmp_path):
    url = str(tmp_path / "cache" / "job.bin")
    first = _process(tmp_path, "first", url)
    assert first["loaded"] is False and first["saved_before_compiling"] is False  # nothing yet: no file
    assert not os.path.exists(url + ".early")
    assert first["fxgraph_cache_miss"] >= 1 and first["saved"] is True and os.path.getsize(url) > 0
    assert first["blocked"][0] is False and "not written" in first["blocked"][1][0]  # a warning, not a failure
    assert first["partial"] == [False, True] and os.path.getsize(url + ".partial") > 0
    # its own, empty Inductor folder (a fresh node; the first process, as empty, missed): hits come
    # only from the file
    second = _process(tmp_path, "second", url)
    assert second["loaded"] is True
    assert second["fxgraph_cache_hit"] >= 1 and second.get("fxgraph_cache_miss", 0) == 0
    assert second["saved"] is False  # it compiled nothing the file lacks: the file is left alone


def test_a_missing_or_broken_file_means_compiling_with_one_warning(tmp_path):
    assert load_artifacts(str(tmp_path / "none.bin")) is None
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not torch compile artifacts")
    with pytest.warns(RuntimeWarning, match="did not load"):
        assert load_artifacts(str(broken)) is None
    unreadable = tmp_path / "a folder.bin"  # reading it raises an OSError other than FileNotFoundError
    unreadable.mkdir()
    with pytest.warns(RuntimeWarning, match="not read"):
        assert load_artifacts(str(unreadable)) is None


def test_the_file_name_keeps_jobs_torch_versions_and_devices_apart(tmp_path, monkeypatch):
    url = artifacts_url(str(tmp_path), "caption", "cpu")
    assert url == str(tmp_path / f"caption-torch{torch.__version__.replace('+', '_')}-cpu.bin")
    assert artifacts_url(str(tmp_path), "train", "cpu") != url
    assert artifacts_url("s3://bucket/cache", "caption").startswith("s3://bucket/cache/caption-torch")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert artifacts_url(str(tmp_path), "caption", "cuda").endswith("-NVIDIA_H100_80GB_HBM3.bin")
    monkeypatch.setattr(torch, "__version__", "9.9.0")
    assert artifacts_url(str(tmp_path), "caption", "cpu") != url


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = str(tmp_path_factory.mktemp("vlm") / "qwen25")
    build_tiny_chat_vlm(out)
    return out


def _config(tmp_path, vlm: str, **captioning) -> Config:
    cfg = Config(workdir=str(tmp_path / "work"))
    return cfg.model_copy(update={"models": cfg.models.model_copy(update={"captioner": vlm}),
                                  "captioning": cfg.captioning.model_copy(update={"qa": False, **captioning})})


def test_the_caption_stage_loads_the_cache_only_where_it_compiles(tmp_path, tiny_vlm):
    """With compile on, the actor hot-loads {workdir}/cache/torch_compile/... (a broken file there: one
    warning, the stage still sets up); with compile off it reads nothing."""
    from vidcorpus.captioning.caption_stage import CaptionStage

    compiled = CaptionStage(_config(tmp_path, tiny_vlm, warmup=False, compile_prefill=True))
    compiled.setup()
    url = compiled.compile_cache_url
    assert url.startswith(str(tmp_path / "work" / "cache" / "torch_compile" / "caption-"))
    os.makedirs(os.path.dirname(url))
    with open(url, "wb") as f:
        f.write(b"broken")
    with pytest.warns(RuntimeWarning, match="did not load"):
        CaptionStage(_config(tmp_path, tiny_vlm, warmup=False, compile_prefill=True)).setup()
    plain = CaptionStage(_config(tmp_path, tiny_vlm, warmup=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        plain.setup()  # the CPU default compiles nothing: the file is not read
    assert plain.compile_cache_url is None
    other = CaptionStage(_config(tmp_path, tiny_vlm, warmup=False, compile_prefill=True, batch_size=3))
    other.setup()
    assert other.compile_cache_url != url  # another batch shape compiles other graphs: its own file


def test_the_caption_stage_saves_the_cache_after_each_warm_up_shape(tmp_path, tiny_vlm, monkeypatch):
    """The order the cache is useful in: load, then each warm-up shape's compile followed by a save, so
    a job stopped (or a warm-up failing) during a later shape still leaves the earlier shapes' artifacts
    to the next job (run 12a: the first shape took 248 s, the job stopped during the second and wrote
    nothing). Saves before the last shape are partial (written only where no file is: never over a
    fuller one); what was loaded is passed on, so a save adds only what is new."""
    from vidcorpus.captioning import caption_stage
    from vidcorpus.captioning.captioner import Captioner

    calls: list[str] = []
    on_file: list = [frozenset({"k"})]  # what load_artifacts finds
    monkeypatch.setattr(caption_stage, "load_artifacts", lambda url: calls.append("load") or on_file[0])
    monkeypatch.setattr(caption_stage, "save_artifacts", lambda url, loaded, partial: calls.append(
        f"save {sorted(loaded) if loaded is not None else None}{' partial' if partial else ''}") or True)

    def generate(self, frames, limits):
        calls.append(f"compile {len(frames)}")
        if len(frames) < self.batch_size and fail_second:
            raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Captioner, "generate_kinds", generate)
    fail_second = False
    settings = dict(warmup=True, compile_prefill=True, batch_size=8, pad_batches=True, pad_shapes=3)
    caption_stage.CaptionStage(_config(tmp_path, tiny_vlm, **settings)).setup()
    assert calls == ["load", "compile 8", "save ['k'] partial", "compile 2", "save ['k']"]

    calls.clear()
    on_file[0] = None  # a first job: no file
    caption_stage.CaptionStage(_config(tmp_path, tiny_vlm, **settings)).setup()
    assert calls == ["load", "compile 8", "save None partial", "compile 2", "save None"]

    calls.clear()
    fail_second = True
    with pytest.warns(RuntimeWarning, match="warm-up failed"):
        caption_stage.CaptionStage(_config(tmp_path, tiny_vlm, **settings)).setup()
    assert calls == ["load", "compile 8", "save None partial", "compile 2"]  # the first shape's artifacts are kept
