"""CPU of the source-decoding stages with the CPU decoder against NVDEC (filters.source_decoder), and
proof that both give the same corpus.

Why: on a GPU node the CPU stages bound `vidcorpus run` (docs/benchmarks.md, the GPU-node runs), and
the technical scorer is almost all 720p decoding (3.1 ms of CPU a source frame on the H100 node,
bench/results/decode_threads_h100_node.json); NVDEC through PyAV's h264_cuvid took 1.43 ms against
3.24 in software (probe_gpu_codecs_h100.json). This measures what the stages themselves save.

In one process, no Ray (as bench/stage_cpu.py), per round and per decoder, interleaved (cpu, nvdec,
nvdec_gpu_frames, then nvdec, nvdec_gpu_frames, cpu, ...; ``--decoders``): the split stage detects the shots of every video
(split.decoder: nvdec for both NVDEC arms, as it reads every frame), the technical
and motion stages score every clip from the source and the extract stage writes every other clip
(filters.source_decoder; recipes keep about half, and the gaps make it seek), with the job's
defaults otherwise. Per decoder: CPU seconds (``time.process_time``, all
threads) and wall seconds of each, the decoders NVDEC opened, and hashes of every clip's scores and
every clip file's bytes, which must agree between the decoders.

    python bench/bench_nvdec_stages.py VIDEO [VIDEO ...] [--rounds 2] [--decoders cpu,nvdec,nvdec_gpu_frames]
        [--set k=v ...] [--out result.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path


def _split(videos: list[str], cfg) -> tuple[list[dict], dict]:
    """The clip rows of the videos (download, probe, split) and the split stage's CPU and wall seconds."""
    from vidcorpus.ingest.download import DownloadStage
    from vidcorpus.ingest.probe import ProbeStage
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.ingest.split_stage import SplitStage
    from vidcorpus.schemas import rows_to_table

    rows = [dict(r, run_id="bench_nvdec") for r in read_inputs([str(Path(v).resolve()) for v in videos])]
    for stage in (DownloadStage, ProbeStage):
        rows = stage(cfg)(rows_to_table(rows)).to_pylist()
    c0, t0 = time.process_time(), time.perf_counter()
    rows = SplitStage(cfg)(rows_to_table(rows)).to_pylist()
    cost = {"cpu_s": round(time.process_time() - c0, 3), "wall_s": round(time.perf_counter() - t0, 3)}
    return [r for r in rows if r.get("clip_id") and not r.get("error_class")], cost


def _round(videos: list[str], decoder: str, sets: list[str]) -> dict:
    from vidcorpus import nvdec, source_frames
    from vidcorpus.config import load_config
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.schemas import rows_to_table
    from vidcorpus.storage import read_bytes

    split_decoder = "cpu" if decoder == "cpu" else "nvdec"  # shot detection reads every frame: cuvid's way
    cfg = load_config(None, [f"workdir={tempfile.mkdtemp(prefix=f'nvdec_{decoder}_')}", "models.preset=tiny",
                             f"filters.source_decoder={decoder}", f"split.decoder={split_decoder}", *sets])
    rows, split_cost = _split(videos, cfg)
    while source_frames._CURSOR:
        source_frames._CURSOR.pop().close()
    out: dict = {"decoder": decoder, "split": split_cost}
    gpu_cursors = []
    real_init = source_frames._SourceCursor.__init__

    def counting(self, *a, **k):  # which cursors really decoded on the GPU
        real_init(self, *a, **k)
        gpu_cursors.append(self.cursor.on_gpu)

    source_frames._SourceCursor.__init__ = counting
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        scored = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
        out["scorers"] = {"cpu_s": round(time.process_time() - c0, 3), "wall_s": round(time.perf_counter() - t0, 3)}
        kept = [r for i, r in enumerate(sorted(scored, key=lambda r: (r["source_path"], r["first_frame"]))) if i % 2 == 0]
        c0, t0 = time.process_time(), time.perf_counter()
        extracted = ExtractStage(cfg)(rows_to_table(kept)).to_pylist()
        out["extract"] = {"cpu_s": round(time.process_time() - c0, 3), "wall_s": round(time.perf_counter() - t0, 3)}
    finally:
        source_frames._SourceCursor.__init__ = real_init
    errors = [r["error"] for r in scored + extracted if r.get("error_class")]
    # the split's rows (every clip's frame range) go into the scores' hash: the same shots too
    scores = sorted((r["clip_id"], r["first_frame"], r["last_frame"],
                     sorted((s["scorer"], s["model"], s["value"]) for s in r["scores"] or [])) for r in scored)
    files = hashlib.sha256()
    for r in sorted(extracted, key=lambda r: r["clip_id"]):
        if r.get("clip_path"):
            files.update(r["clip_id"].encode() + hashlib.sha256(read_bytes(r["clip_path"])).digest())
    modes: dict = {}
    for r in extracted:
        modes[r.get("extract_mode")] = modes.get(r.get("extract_mode"), 0) + 1
    out.update({"frames_in_clips": sum(r["last_frame"] - r["first_frame"] + 1 for r in rows),
                "clips": len(scored), "extracted": len(extracted), "extract_modes": modes, "errors": errors[:5],
                "cursors": len(gpu_cursors), "cursors_on_gpu": sum(gpu_cursors),
                "nvdec_unavailable": sorted(nvdec._UNAVAILABLE),
                "scores_sha256": hashlib.sha256(json.dumps(scores).encode()).hexdigest()[:16],
                "clip_files_sha256": files.hexdigest()[:16]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Config override (section.key=value).")
    ap.add_argument("--decoders", default="cpu,nvdec,nvdec_gpu_frames",
                    help="filters.source_decoder values, in each round's order (the first is the reference).")
    ap.add_argument("--out")
    a = ap.parse_args()
    from run_meta import emit, finish_metadata, run_metadata

    meta = run_metadata()
    decoders = a.decoders.split(",")
    # each round starts with the next decoder (the process's first round pays its imports and first
    # opens; with the best round of each reported, that lands on one round of each decoder at most)
    rounds = [_round(a.videos, decoder, a.sets) for i in range(a.rounds)
              for decoder in decoders[i % len(decoders):] + decoders[:i % len(decoders)]]
    frames = rounds[0]["frames_in_clips"]
    stages = ("split", "scorers", "extract")
    best = {}
    for decoder in decoders:
        mine = [r for r in rounds if r["decoder"] == decoder]
        best[decoder] = {stage: {k: min(r[stage][k] for r in mine) for k in ("cpu_s", "wall_s")} for stage in stages}
        for stage in stages:
            best[decoder][stage]["cpu_ms_per_frame"] = round(1000 * best[decoder][stage]["cpu_s"] / max(frames, 1), 3)
    ref = decoders[0]
    over = {d: {stage: round(best[d][stage]["cpu_s"] / max(best[ref][stage]["cpu_s"], 1e-9), 3) for stage in stages}
            for d in decoders[1:]}
    same = len({(r["scores_sha256"], r["clip_files_sha256"]) for r in rounds}) == 1
    result = {"videos": a.videos, "sets": a.sets, "rounds": a.rounds, "decoders": decoders,
              "clips": rounds[0]["clips"], "frames_in_clips": frames, "best": best,
              f"over_{ref}": over, **({"nvdec_over_cpu": over["nvdec"]} if ref == "cpu" and "nvdec" in over else {}),
              "same_corpus": same, "each_round": rounds}
    emit({**finish_metadata(meta), **result}, a.out)


if __name__ == "__main__":
    main()
