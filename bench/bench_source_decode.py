"""CPU seconds of the technical stage's scoring of one source's clips, with and without skipping
the non-reference frames no scorer reads (``filters.skip_unread_frames``; issue 22, lever 2).

Why: on the GPU-node run the technical stage decoded every frame of each 720p source, though it
reads about 4 frames a second per clip (its samples, the motion stage's pairs and the stills'
frames): a quarter of the job's CPU. This splits one source once, then scores all its clips from
the source (filter before you encode) with the technical stage, each time in a fresh process:
skipping off and on, and with ``--before DIR`` also the code of an older checkout (``git archive
COMMIT | tar -x -C DIR``; the child imports vidcorpus from there), interleaved (before, off, on,
then on, off, before, ...). It reports CPU seconds (``time.process_time``: the process with
FFmpeg's decoder threads; ``time.thread_time``: the main thread alone), wall seconds, the frames the
decoder decoded and the 1-minute load average before and after each run. All scores must be equal.

    python bench/bench_source_decode.py --video edited_000.mp4 [--before DIR] [--rounds 2] [--out result.json]
    python bench/bench_source_decode.py --build /tmp/footage [--sources bikes.mp4 bigbuckbunny.mp4]

``--build`` first renders a 60 s 1280x720 edited video (a cut every 3 to 6 s, some dissolves) with
``bench/make_edited_footage.py`` and x264's default preset (medium: B-frames and b-pyramid on).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_meta import finish_metadata, run_metadata  # bench/ is the script's directory, first on sys.path


def build_video(out: str, sources: list[str], seconds: float, preset: str) -> str:
    from make_edited_footage import main as make_footage

    make_footage(["--sources", *sources, "--minutes", str(seconds / 60), "--video-minutes", str(seconds / 60),
                  "--preset", preset, "--out", out, "--workers", "1"])
    return str(Path(out) / "edited_000.mp4")


def split_rows(video: str, workdir: str) -> list[dict]:
    from vidcorpus.config import load_config
    from vidcorpus.ids import source_id
    from vidcorpus.ingest.split_stage import SplitStage
    from vidcorpus.media import probe_video
    from vidcorpus.schemas import empty_row, rows_to_table

    cfg = load_config(None, [f"workdir={workdir}"])
    row = empty_row(source_id=source_id(video), uri=video, media_type="video", source_path=video,
                    **probe_video(video))
    rows = SplitStage(cfg)(rows_to_table([row])).to_pylist()
    return sorted((r for r in rows if not r.get("error_class")), key=lambda r: r["first_frame"])


def x264_settings(video: str) -> dict:
    """The B-frame settings x264 wrote into the stream's first SEI ("options: ... bframes=3 ...")."""
    import av

    with av.open(video) as c:
        first = bytes(next(p for p in c.demux(video=0) if p.size))
    text = first.split(b"options: ", 1)[-1].split(b"\x00", 1)[0].decode("ascii", "replace")
    opts = dict(o.split("=", 1) for o in text.split() if "=" in o)
    return {k: opts.get(k) for k in ("bframes", "b_pyramid", "b_adapt", "ref", "keyint", "scenecut")}


def use_code(root: str) -> None:
    """Import vidcorpus from another checkout: repoint the editable install's import map (the
    stage folders map into the package) before anything imports it."""
    finder = next(m for name, m in sys.modules.items() if name.startswith("__editable___vidcorpus"))
    finder.MAPPING.update({k: str(Path(root) / Path(v).name) for k, v in finder.MAPPING.items()})


def score_once(rows: list[dict], variant: str, workdir: str) -> tuple[dict, dict]:
    """One technical-stage call over all rows in this (fresh) process, after a warm-up call on the
    first clip (imports, OpenCV and codec set-up), from a cold decoder and packet index."""
    import vidcorpus
    from vidcorpus import frame_index, source_frames
    from vidcorpus.config import load_config
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.schemas import rows_to_table

    sets = [f"workdir={workdir}"] + ([] if variant == "before" else [f"filters.skip_unread_frames={variant == 'on'}"])
    stage = TechnicalStage(load_config(None, sets))
    stage(rows_to_table(rows[:1]))
    source_frames._CURSOR.clear()
    frame_index._CACHE.clear()
    load_before = os.getloadavg()[0]
    c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    out = stage(rows_to_table(rows)).to_pylist()
    cpu, main, wall = time.process_time() - c0, time.thread_time() - m0, time.perf_counter() - t0
    errors = [r["error"] for r in out if r.get("error_class")]
    if errors:
        raise SystemExit(f"technical stage failed: {errors[:3]}")
    decoded = source_frames.frames_decoded() if hasattr(source_frames, "frames_decoded") else None
    run = {"variant": variant, "code": str(Path(vidcorpus.__file__).parent.parent), "cpu_s": round(cpu, 3),
           "main_thread_cpu_s": round(main, 3), "wall_s": round(wall, 3), "frames_decoded": decoded,
           "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    scores = {r["clip_id"]: sorted((s["scorer"], s["value"]) for s in r["scores"]) for r in out}
    return run, scores


def decode_only(video: str, skip_all: bool) -> dict:
    """The ceiling: CPU seconds of decoding the whole source as the cursor does (frame threads),
    every frame, or skipping every non-reference frame (all FFmpeg could leave out)."""
    import av

    load_before = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    with av.open(video) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONREF" if skip_all else "DEFAULT"
        decoded = sum(1 for _ in c.decode(stream))
    return {"variant": "decode_refs_only" if skip_all else "decode_all", "cpu_s": round(time.process_time() - c0, 3),
            "main_thread_cpu_s": None, "wall_s": round(time.perf_counter() - t0, 3), "frames_decoded": decoded,
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}


def child(variant: str, rows_file: str, workdir: str) -> None:
    if variant == "before":
        use_code(os.environ["BENCH_BEFORE_CODE"])
    rows = pickle.loads(Path(rows_file).read_bytes())
    if variant.startswith("decode_"):
        print(json.dumps({"run": decode_only(rows[0]["source_path"], variant == "decode_refs_only"), "scores": {}}))
        return
    run, scores = score_once(rows, variant, workdir)
    print(json.dumps({"run": run, "scores": scores}))


def run_child(variant: str, rows_file: str, workdir: str, before: str | None) -> tuple[dict, dict]:
    env = dict(os.environ, BENCH_BEFORE_CODE=before or "")
    done = subprocess.run([sys.executable, __file__, "--child", variant, rows_file, workdir], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} run failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["run"], {c: [tuple(x) for x in v] for c, v in got["scores"].items()}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", help="A source video (720p x264 for the documented figures).")
    ap.add_argument("--build", metavar="DIR", help="Render the 60 s 720p edited video into DIR first.")
    ap.add_argument("--sources", nargs="+", default=["/tmp/hb/src/bikes.mp4", "/tmp/hb/src/bigbuckbunny.mp4"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--preset", default="medium", help="x264 preset of --build (medium: x264's default), or the "
                    "one --video was made with (recorded).")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds of the variants, the order reversed every other one.")
    ap.add_argument("--before", metavar="DIR", help="An older checkout to time too (variant 'before').")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "ROWS", "WORKDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    if not a.video and not a.build:
        ap.error("give --video or --build")
    video = a.video or build_video(a.build, a.sources, a.seconds, a.preset)

    import av

    from vidcorpus.media import probe_video

    meta = run_metadata()
    work = tempfile.mkdtemp(prefix="bench_source_decode_")
    rows = split_rows(video, work)
    rows_file = Path(work) / "rows.pkl"
    rows_file.write_bytes(pickle.dumps(rows))
    with av.open(video) as c:
        cc = c.streams.video[0].codec_context
        codec = {"codec": cc.name, "profile": cc.profile, "has_b_frames": bool(cc.has_b_frames)}
    variants = (["before"] if a.before else []) + ["off", "on", "decode_all", "decode_refs_only"]
    runs, scores = [], {}
    for k in range(a.rounds):
        for variant in (variants if k % 2 == 0 else variants[::-1]):
            run, got = run_child(variant, str(rows_file), work, a.before)
            run["round"] = k + 1
            runs.append(run)
            print(json.dumps(run), flush=True)
            if got and scores.setdefault(variant, got) != got:
                raise SystemExit(f"{variant} gave other scores in round {k + 1}")
    if any(v != scores["on"] for v in scores.values()):
        raise SystemExit("the variants' scores differ")

    def median(variant: str, key: str):
        values = [r[key] for r in runs if r["variant"] == variant]
        return None if None in values else statistics.median(values)

    m = {v: {key: median(v, key) for key in ("cpu_s", "main_thread_cpu_s", "wall_s", "frames_decoded")}
         for v in variants}
    report = {
        **finish_metadata(meta),
        "video": {"path": video, **probe_video(video), **codec, "x264": x264_settings(video)},
        "x264_preset": a.preset,
        "clips": len(rows),
        "frames_in_clips": sum(r["last_frame"] - r["first_frame"] + 1 for r in rows),
        "runs": runs,
        "scores_equal": True,
        "median": m,
        "cpu_ratio_on_over_off": round(m["on"]["cpu_s"] / m["off"]["cpu_s"], 3),
    }
    if a.before:
        report["cpu_ratio_on_over_before"] = round(m["on"]["cpu_s"] / m["before"]["cpu_s"], 3)
    print(json.dumps(report, indent=1))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
