"""Shard writer and reader throughput (issue 7), each against its reference measured in the same run.

Writer: ``shards.writer.write_shard`` (read clip files through fsspec, tar with webdataset, sha256
while streaming, fsync, atomic rename) against a plain copy of the same member files into one file
per shard (``shutil.copyfileobj`` + fsync): MB/s of payload, median of ``--repeat`` runs.

Reader: samples/s through ``shard_reader.sample_pipeline`` (whole-shard sha256 verification,
tar expansion, grouping) with 1, 2 and 4 DataLoader workers, raw (bytes only) and decoded as the
trainer decodes (``train.data.decode_sample``: PyAV, frame sampling, resize + crop).

    python bench/bench_shards.py --clips 256 --clip-mb 1.0 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_payload_clips(root: Path, n: int, mb: float) -> list[dict]:
    """Clip rows whose files are random bytes of a real clip's size (the writer only moves bytes)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        clip, first = root / f"{i:05d}.mp4", root / f"{i:05d}.first.jpg"
        clip.write_bytes(rng.integers(0, 256, int(mb * (1 << 20)), dtype=np.uint8).tobytes())
        first.write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
        rows.append(_row(i, clip, first))
    return rows


def make_video_clips(root: Path, n: int) -> list[dict]:
    """Real H.264 clips (16 frames, 320x192) for the decoding reader measurement."""
    from vidcorpus.media import encode_video, save_jpeg
    from vidcorpus.synth import _shapes_shot

    rows = []
    for i in range(n):
        frames = _shapes_shot(16, seed=i)
        clip, first = root / f"v{i:05d}.mp4", root / f"v{i:05d}.first.jpg"
        encode_video(frames, 24, str(clip))
        save_jpeg(frames[0], str(first))
        rows.append(_row(i, clip, first))
    return rows


def _row(i: int, clip: Path, first: Path) -> dict:
    return {"clip_id": f"{i:016x}-0000000-0000015", "source_id": f"{i:016x}", "media_type": "video",
            "clip_path": str(clip), "first_frame_path": str(first), "width": 320, "height": 192, "n_frames": 16,
            "fps": 24.0, "source_text": f"clip {i}", "scores": [{"scorer": "aesthetic", "model": "m", "version": "1",
                                                                  "value": 5.0}], "captions": []}


def plain_copy(rows: list[dict], out: Path) -> None:
    with open(out, "wb") as dst:
        for r in rows:
            for path in (r["clip_path"], r["first_frame_path"]):
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def bench_writer(rows: list[dict], per_shard: int, repeat: int, work: Path) -> dict:
    from vidcorpus.shards.writer import write_shard

    payload = sum(os.path.getsize(r["clip_path"]) + os.path.getsize(r["first_frame_path"]) for r in rows)
    groups = [rows[i:i + per_shard] for i in range(0, len(rows), per_shard)]
    ours, ref = [], []
    for k in range(repeat):
        for label, times in (("copy", ref), ("writer", ours)):  # alternate so drift hits both
            out = work / f"{label}-{k}"
            out.mkdir()
            t0 = time.perf_counter()
            for j, g in enumerate(groups):
                if label == "copy":
                    plain_copy(g, out / f"{j}.bin")
                else:
                    write_shard("video-bench", g, str(out), "v1")
            times.append(time.perf_counter() - t0)
            shutil.rmtree(out)
    mb = payload / 1e6
    w, c = statistics.median(ours), statistics.median(ref)
    return {"payload_mb": round(mb, 1), "shards": len(groups), "writer_s": round(w, 3), "copy_s": round(c, 3),
            "writer_mb_s": round(mb / w, 1), "copy_mb_s": round(mb / c, 1), "ratio": round(c / w, 3),
            "writer_runs_s": [round(t, 3) for t in ours], "copy_runs_s": [round(t, 3) for t in ref]}


class _Raw(torch.utils.data.IterableDataset):
    def __init__(self, specs, decode_cfg=None):
        self.specs, self.decode_cfg = specs, decode_cfg

    def __iter__(self):
        from vidcorpus.shard_reader import sample_pipeline
        from vidcorpus.train.data import decode_sample

        for s in sample_pipeline(self.specs, seed=0):
            if self.decode_cfg is None:
                yield len(s.get("mp4", b""))
            else:
                yield decode_sample(s, self.decode_cfg, None)["video"].shape[0]


def bench_reader(specs, workers: int, decode_cfg=None) -> dict:
    ds = _Raw(specs, decode_cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         persistent_workers=False) if workers else ds
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    dt = time.perf_counter() - t0
    return {"workers": workers, "samples": n, "seconds": round(dt, 3), "samples_s": round(n / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--clip-mb", type=float, default=1.0)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--video-clips", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workdir", default=None, help="Where files go (default a temp dir on local disk).")
    args = ap.parse_args()

    from vidcorpus.config import TrainConfig
    from vidcorpus.shard_reader import ShardSpec
    from vidcorpus.shards.writer import write_shard

    torch.set_num_threads(1)
    base = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-shards-"))
    try:
        src = base / "src"
        src.mkdir()
        result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "machine": platform.machine(), "load_before": os.getloadavg()}
        raw_rows = make_payload_clips(src, args.clips, args.clip_mb)
        result["writer"] = bench_writer(raw_rows, args.per_shard, args.repeat, base)
        # reader: shards of the payload clips (raw) and of real video clips (decoded)
        vids = base / "vids"
        vids.mkdir()
        video_rows = make_video_clips(vids, args.video_clips)
        shard_root = base / "shards"
        raw_specs = [ShardSpec(**{k: m[k] for k in ("url", "sha256", "bytes", "n")})
                     for m in (write_shard("video-raw", raw_rows[i:i + args.per_shard], str(shard_root), "v1")
                               for i in range(0, len(raw_rows), args.per_shard))]
        vid_specs = [ShardSpec(**{k: m[k] for k in ("url", "sha256", "bytes", "n")})
                     for m in (write_shard("video-dec", video_rows[i:i + 16], str(shard_root), "v1")
                               for i in range(0, len(video_rows), 16))]
        cfg = TrainConfig(num_frames=8, height=128, width=224, fps=8)
        result["reader_raw"] = [bench_reader(raw_specs, w) for w in args.workers]
        result["reader_decoded"] = [bench_reader(vid_specs, w, cfg) for w in args.workers]
        result["load_after"] = os.getloadavg()
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
