"""Load: N short generated videos through the whole pipeline on a local Ray, with memory sampled (issue 11).

Each video is about 2.5 s at 160x128 with two shots (a hard cut in the middle). The run is
``pipeline.run_pipeline`` with the tiny models on a local Ray of ``--cpus`` CPUs: download (hash in
place), probe, split, extract, technical, motion, CLIP/aesthetic, decide, caption, caption QA,
catalog commits, dedup, shards. A sampler thread records, every ``--every`` seconds, the resident
set size (RSS) of the driver and of every process under it (GCS, raylet, Ray workers and actors),
and how many rows the driver has committed so far. The JSON holds the time series; the PNG plots it.

"Flat" is judged on the second half of the run (after Ray and the models have started): the slope
of a least-squares line through the total RSS, in MB per minute and in MB per 1,000 committed rows.
RSS counts shared pages (Ray's object store in /dev/shm) in every process that maps them, so the
total over-states the machine's use; the driver's own RSS is reported apart.

    python bench/load_pipeline.py --videos 1000 --cpus 2 --out bench/results/load_1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_short_video(index: int, out_dir: Path, size=(160, 128), fps: int = 12) -> Path:
    """Two shots (one hard cut) of a blocky texture panning under a moving square, about 2.5 s.

    Just big, long, sharp and moving enough for the demo recipe (duration >= 1 s, short side >= 128,
    blur, motion) to keep the clips, so captioning and shards run too.
    """
    from vidcorpus.media import encode_video

    rng = np.random.default_rng(index)
    w, h = size
    frames = []
    for shot in range(2):
        n = int(rng.integers(fps + 2, fps + 6))  # 14 to 17 frames: 1.2 to 1.4 s per shot
        big = rng.integers(0, 256, (h // 8 + 8, w // 8 + 24, 3), dtype=np.uint8)
        big = np.kron(big, np.ones((8, 8, 1), np.uint8))
        fg = rng.integers(0, 256, 3).astype(np.uint8)
        for t in range(n):
            x0 = (4 * t) % (big.shape[1] - w)
            f = big[:h, x0:x0 + w].copy()
            x = (4 + 6 * t + 30 * shot) % (w - 24)
            f[40:64, x:x + 24] = fg
            frames.append(f)
    path = out_dir / f"load_{index:05d}.mp4"
    encode_video(frames, fps, str(path))
    return path


class RssSampler(threading.Thread):
    """RSS of this process and all its descendants every `every` seconds, with a row counter."""

    def __init__(self, every: float = 1.0, partial: Path | None = None):
        super().__init__(daemon=True)
        self.partial = partial  # the series so far is written here every minute (a cut-off run keeps it)
        import psutil

        self.me = psutil.Process(os.getpid())
        self.every = every
        self.samples: list[dict] = []
        self.rows = 0
        self._halt = threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            driver = self.me.memory_info().rss
            total, n, biggest = driver, 1, 0
            for p in self.me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                n += 1
                biggest = max(biggest, rss)
            self.samples.append({"t": round(time.time() - self.t0, 2), "driver_mb": round(driver / 2**20, 1),
                                 "total_mb": round(total / 2**20, 1), "largest_child_mb": round(biggest / 2**20, 1),
                                 "processes": n, "rows": self.rows, "load1": os.getloadavg()[0]})
            if self.partial and len(self.samples) % 60 == 0:
                self.partial.write_text(json.dumps({"partial": True, **summarise(self.samples), "samples": self.samples}))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def slope(xs, ys) -> float:
    if len(xs) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def summarise(samples: list[dict]) -> dict:
    half = samples[len(samples) // 2:]
    t = [s["t"] for s in half]
    rows = [s["rows"] for s in half]
    out = {
        "peak_total_mb": max(s["total_mb"] for s in samples),
        "peak_driver_mb": max(s["driver_mb"] for s in samples),
        "peak_largest_child_mb": max(s["largest_child_mb"] for s in samples),
        "second_half_total_slope_mb_per_min": round(slope(t, [s["total_mb"] for s in half]) * 60, 2),
        "second_half_driver_slope_mb_per_min": round(slope(t, [s["driver_mb"] for s in half]) * 60, 2),
    }
    if rows and rows[-1] > rows[0]:
        out["second_half_total_slope_mb_per_1000_rows"] = round(
            slope(rows, [s["total_mb"] for s in half]) * 1000, 2)
    q = len(samples) // 4
    if q:
        out["median_total_mb_quarters"] = [round(float(np.median([s["total_mb"] for s in samples[i * q:(i + 1) * q]])), 1)
                                           for i in range(4)]
    return out


def plot(samples: list[dict], path: Path, title: str, starts: list[float] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["total_mb"] for s in samples], label="driver + all Ray processes (sum of RSS)")
    ax.plot(t, [s["largest_child_mb"] for s in samples], label="largest single Ray process")
    ax.plot(t, [s["driver_mb"] for s in samples], label="driver")
    for x in starts:
        ax.axvline(x, color="k", lw=0.5, ls=":")
    ax.set_xlabel("minutes (dotted: a run starts)")
    ax.set_ylabel("RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["rows"] for s in samples], color="grey", ls="--", label="rows committed")
    ax2.set_ylabel("rows committed")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000, help="videos per round")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--out", default="bench/results/load_pipeline")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--window", type=int, default=None,
                    help="ray.window_sources (sources per pipeline window); default: the config's")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs one after the other in this driver, each over --videos new videos appended to the "
                         "same catalog (RSS over a longer span: does it grow from round to round?)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the runs' lines, as the CLI shows them

    from vidcorpus.jobs.curate import pipeline
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.jobs.models import resolve_models

    base = Path(tempfile.mkdtemp(prefix="load-pipeline-"))
    media = base / "media"
    media.mkdir()
    t0 = time.time()
    lists = []
    for r in range(args.rounds):
        lists.append(base / f"sources-{r}.jsonl")
        with open(lists[-1], "w") as f:
            for i in range(r * args.videos, (r + 1) * args.videos):
                p = make_short_video(i, media)
                f.write(json.dumps({"url": str(p), "text": f"a square moving over a flat colour, video {i}"}) + "\n")
    gen_s = time.time() - t0
    overrides = [f"ray.num_cpus={args.cpus}"] + ([f"ray.window_sources={args.window}"] if args.window else [])
    cfg = load_config(None, overrides, workdir=str(base / "work"), inputs=[str(lists[0])],
                      **{"models.preset": "tiny", "models.cache_dir": str(base / "models")})
    resolve_models(cfg.models)  # build the tiny models before the timed, sampled run

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sampler = RssSampler(args.every, Path(args.out + ".partial.json"))
    commit = Catalog.commit_results

    def counting_commit(self, run_id, rows, *a, **kw):
        out = commit(self, run_id, rows, *a, **kw)
        sampler.rows += len(rows)
        commits.append(round(time.time() - t1, 2))
        return out

    Catalog.commit_results = counting_commit
    commits: list[float] = []  # seconds into the run of each result commit
    load_before = os.getloadavg()
    sampler.start()
    t1 = time.time()
    rounds = []
    try:
        for r, lst in enumerate(lists):
            t_r, n0 = time.time() - sampler.t0, len(sampler.samples)
            summary = pipeline.run_pipeline(cfg.model_copy(update={"inputs": [str(lst)]}), progress=False)
            part = sampler.samples[n0:]
            rounds.append({"round": r, "start_s": round(t_r, 1), "seconds": round(time.time() - sampler.t0 - t_r, 1),
                           "rows": summary.rows_committed,
                           "peak_total_mb": max((s["total_mb"] for s in part), default=None),
                           "peak_driver_mb": max((s["driver_mb"] for s in part), default=None)})
            print("round", rounds[-1], flush=True)
    finally:
        sampler.stop()
    seconds = time.time() - t1
    import ray

    ray.shutdown()
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        q = lambda sql: cat.con.execute(sql).fetchall()[0]  # noqa: E731
        facts = {
            "sources": q("SELECT count(*) FROM sources")[0],
            "sources_done": q("SELECT count(*) FROM sources WHERE status = 'done'")[0],
            "clips": q("SELECT count(*) FROM clips")[0],
            "distinct_clips": q("SELECT count(DISTINCT clip_id) FROM clips")[0],
            "kept": q("SELECT count(*) FROM clips_wide WHERE kept")[0],
            "shard_members": q("SELECT count(*) FROM shard_members")[0],
            "distinct_shard_members": q("SELECT count(DISTINCT clip_id) FROM shard_members")[0],
            "shards": q("SELECT count(*) FROM shards")[0],
            "failures": q("SELECT count(*) FROM failures")[0],
        }
    tars = sorted(p.name for p in (base / "work" / "shards").rglob("*.tar"))
    facts["tars_on_disk"] = len(tars)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": args.cpus, "videos": args.videos * args.rounds,
        "generate_s": round(gen_s, 1), "pipeline_s": round(seconds, 1),
        "clips_per_s": round(facts["clips"] / seconds, 2), "load_before": load_before, "load_after": os.getloadavg(),
        "rows_committed": sampler.rows, "window_sources": cfg.ray.window_sources,
        "first_commit_s": commits[0] if commits else None, "commits": len(commits), "rounds": rounds, **facts, **summarise(sampler.samples), "samples": sampler.samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot(sampler.samples, Path(args.out + ".png"),
         f"{args.videos * args.rounds} videos in {args.rounds} run(s), {args.cpus} CPUs: RSS ({facts['clips']} clips)",
         [r["start_s"] / 60 for r in rounds])
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print("kept", base)


if __name__ == "__main__":
    main()
