"""Sources decoded on the GPU's video decoder (filters.source_decoder=nvdec, vidcorpus/nvdec.py) give
the corpus of the CPU decoder: the same frames, scores and clip bytes; where NVDEC does not open the
run decodes on the CPU; the decoding stages ask Ray for the GPU share that lets them see the GPU.

This machine has no GPU: the cursor's NVDEC path runs here on a stand-in, FFmpeg's software H.264
decoder in a codec context of its own fed with the demuxed packets (as the cuvid decoder is) and
handing out NV12 frames (as NVDEC does). The real decoder is measured on the GPU node
(bench/bench_nvdec_stages.py)."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from test_source_skip import _extracted, _scores, _split, keyed, video  # noqa: F401 - fixtures
from vidcorpus import frame_index, nvdec
from vidcorpus.config import load_config
from vidcorpus.frame_index import FrameCursor
from vidcorpus.frame_seek import planar, to_rgb
from vidcorpus.schemas import rows_to_table


class _StandInNvdec:
    """A decoder context like cuvid's: its own codec context, packets in, NV12 frames out."""

    created = 0

    def __init__(self, stream):
        type(self).created += 1
        self.ctx = av.CodecContext.create("h264", "r")
        self.ctx.extradata = stream.codec_context.extradata
        self.codec, self.extradata = self.ctx.codec, self.ctx.extradata
        self.decodes = 0

    def decode(self, packet):
        self.decodes += 1
        for frame in self.ctx.decode(packet):
            nv12 = frame.reformat(format="nv12")
            nv12.color_range = 1  # h264_cuvid tags its frames limited-range (bench/results/probe_nvdec_*.json)
            yield nv12

    def flush_buffers(self):
        self.ctx.flush_buffers()


@pytest.fixture
def stand_in(monkeypatch):
    """cuvid_context handing out stand-ins, kept and reused through nvdec.release as real ones are."""
    nvdec._IDLE.clear()
    _StandInNvdec.created = 0

    def context(stream):
        key = (nvdec.CUVID, "h264", bytes(stream.codec_context.extradata or b""))
        return nvdec._IDLE.pop(key, None) or _StandInNvdec(stream)

    monkeypatch.setattr(frame_index, "cuvid_context", context)
    yield _StandInNvdec
    nvdec._IDLE.clear()


def _close_cursor() -> None:
    from vidcorpus import source_frames

    while source_frames._CURSOR:
        source_frames._CURSOR.pop().close()


def test_nv12_frames_convert_to_the_software_decoders_pixels(video):
    """NVDEC's planes are the software decoder's; in NV12 they must still give the same RGB and the
    same scaled frames (swscale's own NV12 path gives RGB a few levels apart)."""
    with av.open(video) as c:
        frames = [f for _, f in zip(range(30), c.decode(video=0))]
    for frame in frames:
        nv12 = frame.reformat(format="nv12")
        nv12.color_range = 1
        assert planar(frame) is frame
        back = planar(nv12)
        assert back.format.name == "yuv420p" and back.pts == frame.pts
        assert np.array_equal(back.to_ndarray(), frame.to_ndarray())  # lossless
        assert np.array_equal(to_rgb(nv12), to_rgb(frame))
        half = dict(width=frame.width // 2, height=frame.height // 2, interpolation="AREA")
        assert np.array_equal(to_rgb(planar(nv12).reformat(**half)), to_rgb(frame.reformat(**half)))


def _scored_and_extracted(tmp_path, path: str, decoder: str, counts: dict | None = None) -> tuple:
    """(scores, precise clip bytes of three clips, whether the scorers' cursor decoded on the GPU) with
    ``filters.source_decoder=decoder``; ``counts`` gets the frames the scorers decoded and the frames
    copied to the host meanwhile (``gpu_frames_stand_in``'s list) before extraction runs."""
    from vidcorpus import source_frames
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage

    cfg = load_config(None, [f"filters.source_decoder={decoder}", "split.extract_mode=precise"],
                      workdir=str(tmp_path / decoder))
    rows = _split(cfg, path)
    _close_cursor()
    scored = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
    assert all(not r["error_class"] for r in scored), [r["error"] for r in scored]
    on_gpu = bool(source_frames._CURSOR) and source_frames._CURSOR[0].cursor.on_gpu
    if counts is not None:
        counts.update(decoded=source_frames.frames_decoded(), copied=len(_COPIED))
    _close_cursor()  # as the next source's read does: its decoder goes back to nvdec
    clips, _ = _extracted(cfg, [rows[0], rows[2], rows[3]])
    return _scores(scored), clips, on_gpu


_COPIED: list = []  # frames gpu_frames_stand_in copied to the host (pts), reset by the test


@pytest.mark.parametrize("source", ["video", "keyed"])
def test_scores_and_clips_through_the_gpu_decoder_path_are_the_cpu_decoders(tmp_path, request, stand_in, source):
    """technical, motion and precise extraction with filters.source_decoder=nvdec read every source
    through the cursor's GPU-decoder path (seeking, on the keyed source) and write the scores and clip
    bytes of the CPU decoder; decoders are reused across the cursors of a process, not made per seek."""
    path = request.getfixturevalue(source)
    out = {}
    for decoder in ("cpu", "nvdec"):
        scores, clips, on_gpu = _scored_and_extracted(tmp_path, path, decoder)
        out[decoder] = (scores, clips, on_gpu)
    assert not out["cpu"][2] and out["nvdec"][2]
    assert out["nvdec"][0] == out["cpu"][0]
    assert out["nvdec"][1] == out["cpu"][1]
    assert all(any(s[0] == "blur" for s in v) and any(s[0] == "motion" for s in v) for v in out["nvdec"][0].values())
    assert stand_in.created == 1  # one decoder for every cursor of the process, flushed between them


def test_a_cursor_that_seeks_back_after_nvdec_frames_gets_the_frames_of_a_fresh_decode(keyed, stand_in):
    """A decoder handed back with frames still in it (a cursor closed mid-source) is flushed: the next
    cursor's first frames are its own source's, not the last one's."""
    with av.open(keyed) as c:
        full = [to_rgb(f) for f in c.decode(video=0)]
    first = FrameCursor(keyed, 0, None, nvdec=nvdec.CUVID)
    assert first.on_gpu
    taken = list(first.take(0, 50))
    assert [i for i, _ in taken] == list(range(51))
    first.close()
    again = FrameCursor(keyed, 90, frame_index.index_of(keyed), nvdec=nvdec.CUVID)
    got = dict(again.take(90, 125))
    again.close()
    assert sorted(got) == list(range(90, 126))
    assert all(np.array_equal(to_rgb(got[i]), full[i]) for i in got)
    assert stand_in.created == 1


def test_where_nvdec_does_not_open_the_cursor_decodes_on_the_cpu_and_says_so_once(video, caplog):
    """No GPU visible (this machine; a Ray task without a GPU share): the same frames, on the CPU, one
    warning per process."""
    nvdec._UNAVAILABLE.clear()
    nvdec._IDLE.clear()
    with av.open(video) as c:
        full = [to_rgb(f) for f in c.decode(video=0)]
    with caplog.at_level(logging.WARNING, logger="vidcorpus.nvdec"):
        cursors = [FrameCursor(video, 0, None, nvdec=nvdec.CUVID) for _ in range(2)]
    if any(c.on_gpu for c in cursors):
        pytest.skip("this machine's NVDEC opened")
    got = [f for _, f in cursors[0].take(0, len(full) - 1)]
    for c in cursors:
        c.close()
    assert len(got) == len(full) and all(np.array_equal(to_rgb(a), b) for a, b in zip(got, full))
    warnings = [r.getMessage() for r in caplog.records if "does not open here" in r.getMessage()]
    assert len(warnings) == 1 and "decoding sources on the CPU" in warnings[0]


def test_decoding_stages_ask_for_a_gpu_share_only_with_nvdec_and_a_gpu():
    from vidcorpus.config import Config
    from vidcorpus.jobs.curate.pipeline import split_stages
    from vidcorpus.stage_settings import resolve

    decoding = {"technical", "motion", "extract"}
    for decoder, gpus, want in (("nvdec", 1.0, nvdec.TASK_GPU_SHARE), ("nvdec", 0.0, 0.0), ("cpu", 1.0, 0.0)):
        cfg = Config.model_validate({"filters": {"source_decoder": decoder}})
        stream, captioning = split_stages(cfg)
        plans = {c.name: p for c, p in resolve(stream + captioning, cfg, gpus, 16.0).items()}
        assert {n: plans[n].gpus for n in decoding} == {n: want for n in decoding}, (decoder, gpus)
        assert all(plans[n].ray_args().get("num_gpus", 0.0) == want for n in decoding)
        # Ray Data refuses a task asking for a GPU without a batch size (the H100 job's first try did)
        assert all(p.batch_rows for p in plans.values() if p.gpus > 0), {n: p for n, p in plans.items() if p.gpus}
        if want:
            assert plans["technical"].batch_rows == plans["motion"].batch_rows == cfg.ray.clip_rows_per_block
        else:
            assert plans["technical"].batch_rows is None  # whole blocks: one source's clips a call


def test_a_turned_source_stays_on_the_cpu_decoder():
    """NVDEC's frames carry no display matrix: a turned source (phone footage) is read on the CPU."""
    from vidcorpus.source_frames import decoder_for

    cfg = load_config(None, ["filters.source_decoder=nvdec"])
    assert decoder_for([{"rotation": 0}, {"rotation": None}], cfg.filters)["nvdec"] == nvdec.CUVID
    assert decoder_for([{"rotation": 90}], cfg.filters)["nvdec"] is None
    assert decoder_for([{"rotation": 0}], load_config(None, []).filters)["nvdec"] is None
    on_gpu = load_config(None, ["filters.source_decoder=nvdec_gpu_frames"]).filters
    assert decoder_for([{"rotation": 0}], on_gpu)["nvdec"] == nvdec.GPU_FRAMES
    assert decoder_for([{"rotation": 270}], on_gpu)["nvdec"] is None


def _split_rows(cfg, path: str) -> list[tuple]:
    return [(r["clip_id"], r["first_frame"], r["last_frame"], len(r["dropped"] or [])) for r in _split(cfg, path)]


@pytest.mark.parametrize("sets", [["split.decode_process=off"],
                                  ["split.decode_process=off", "split.chunk_seconds=2"]],
                         ids=["one-pass", "chunked"])
def test_shot_detection_through_the_gpu_decoder_path_finds_the_cpu_decoders_shots(tmp_path, keyed, stand_in, sets):
    """split.decoder=nvdec: the detection stream reads its frames through the cursor's GPU-decoder path
    (from frame 0, or from a chunk's keyframe) and the splitter cuts where the CPU decoder's frames
    made it cut."""
    cpu = _split_rows(load_config(None, sets, workdir=str(tmp_path / "cpu")), keyed)
    created = stand_in.created
    gpu = _split_rows(load_config(None, [*sets, "split.decoder=nvdec"], workdir=str(tmp_path / "gpu")), keyed)
    assert stand_in.created > created or nvdec._IDLE  # the stand-in decoded (and went back to the pool)
    assert gpu == cpu and len(cpu) >= 3


def test_shot_detection_in_the_decoding_child_takes_the_setting(tmp_path, keyed):
    """The decoding child (split.decode_process) gets split.decoder in its stream spec; where NVDEC does
    not open there (this machine) it decodes on the CPU and finds the same shots."""
    from vidcorpus.ingest import decode_process

    sent = []
    real = decode_process.StreamSpec.__init__

    def recording(self, *a, **k):
        real(self, *a, **k)
        sent.append(self.nvdec)

    decode_process.StreamSpec.__init__ = recording
    try:
        rows = {d: _split_rows(load_config(None, ["split.decode_process=on", f"split.decoder={d}"],
                                           workdir=str(tmp_path / d)), keyed) for d in ("cpu", "nvdec")}
    finally:
        decode_process.StreamSpec.__init__ = real
    assert sent == [False, True]
    assert rows["nvdec"] == rows["cpu"] and rows["cpu"]


def test_split_tasks_ask_for_a_gpu_share_with_nvdec():
    from vidcorpus.config import Config
    from vidcorpus.ingest.split_stage import SplitStage

    def share(**split) -> float:
        return SplitStage.resources_for(Config.model_validate({"split": split})).gpus

    assert share(decoder="nvdec", transnet_on_gpu=False) == nvdec.TASK_GPU_SHARE
    assert share(transnet_on_gpu=False) == 0.0
    # beside TransNetV2 on the GPU (where its package is installed) the larger of the two shares
    assert share(decoder="nvdec") == max(share(), nvdec.TASK_GPU_SHARE)


def test_a_run_says_in_one_line_when_its_nvdec_switches_find_no_gpu():
    from vidcorpus.config import Config

    both = Config.model_validate({"split": {"decoder": "nvdec"}, "filters": {"source_decoder": "nvdec"}})
    assert nvdec.without_gpu_note(both, 0.0) == ("split.decoder=nvdec and filters.source_decoder=nvdec, but the "
                                                 "cluster has no GPU: sources are decoded on the CPU")
    assert nvdec.without_gpu_note(both, 1.0) is None
    assert nvdec.without_gpu_note(Config(), 0.0) is None
    assert nvdec.without_gpu_note(Config.model_validate({"filters": {"source_decoder": "nvdec_gpu_frames"}}),
                                  0.0).startswith("filters.source_decoder=nvdec_gpu_frames, but")


class _StandInHwFrames(_StandInNvdec):
    """A decoder context like the CUDA hwaccel's with frames left on the GPU: its own codec context,
    packets in, NV12 frames out: the cursor copies them over through ``frame_seek.planar``, the call
    that transfers a CUDA frame (PyAV's reformatter, which moves every property with it)."""

    def decode(self, packet):
        self.decodes += 1
        for frame in self.ctx.decode(packet):
            yield frame.reformat(format="nv12")  # the hwaccel's frames keep the decoder's colour tags


@pytest.fixture
def gpu_frames_stand_in(monkeypatch):
    """hw_frames_context handing out stand-ins (pooled through nvdec.release), and a count of the
    frames copied to the host."""
    nvdec._IDLE.clear()
    _StandInHwFrames.created = 0
    copied = _COPIED
    copied.clear()

    def context(stream):
        key = (nvdec.GPU_FRAMES, "h264 with the CUDA hwaccel", bytes(stream.codec_context.extradata or b""))
        return nvdec._IDLE.pop(key, None) or _StandInHwFrames(stream)

    real = frame_index.planar

    def copy_over(frame):
        if frame.format.name == "nv12":  # a stand-in's frame: one in GPU memory on a real decoder
            copied.append(frame.pts)
        return real(frame)

    monkeypatch.setattr(frame_index, "hw_frames_context", context)
    monkeypatch.setattr(frame_index, "planar", copy_over)
    yield _StandInHwFrames, copied
    nvdec._IDLE.clear()


def test_a_frame_copied_from_the_gpu_keeps_its_pixels_timing_and_colour_tags(video, gpu_frames_stand_in):
    with av.open(video) as c:
        frames = [f for _, f in zip(range(12), c.decode(video=0))]
    for frame in frames:
        frame.color_range = 1  # a tag the copy must carry over
        host = frame_index.planar(frame.reformat(format="nv12"))
        assert host.format.name == "yuv420p"
        assert (host.pts, host.time_base, host.color_range) == (frame.pts, frame.time_base, 1)
        assert np.array_equal(host.to_ndarray(), frame.to_ndarray())
        assert np.array_equal(to_rgb(host), to_rgb(frame))
    assert len(gpu_frames_stand_in[1]) == len(frames)


@pytest.mark.parametrize("source", ["video", "keyed"])
def test_frames_left_on_the_gpu_give_the_cpu_decoders_corpus_and_only_sampled_frames_are_copied(
        tmp_path, request, gpu_frames_stand_in, source):
    """filters.source_decoder=nvdec_gpu_frames: the scorers' source decode copies to the host only the
    frames they sample, and scores and precise clips are the CPU decoder's (extraction copies every
    frame of its clips)."""
    stand_in, copied = gpu_frames_stand_in
    path = request.getfixturevalue(source)
    out = {}
    for decoder in ("cpu", "nvdec_gpu_frames"):
        copied.clear()
        counts = {}
        scores, clips, _on_gpu = _scored_and_extracted(tmp_path, path, decoder, counts)
        out[decoder] = (scores, clips, counts["copied"], counts["decoded"])
    assert out["cpu"][2] == 0
    assert out["nvdec_gpu_frames"][0] == out["cpu"][0]
    assert out["nvdec_gpu_frames"][1] == out["cpu"][1]
    copies, decoded = out["nvdec_gpu_frames"][2:]
    assert 0 < copies < decoded / 2, (copies, decoded)  # the scorers sample a fraction of what is decoded
    assert stand_in.created == 1  # one decoder for every cursor of the process


def test_frames_stay_on_the_gpu_only_for_8_bit_420_limited_range_streams(tmp_path):
    """A 4:4:4 or a full-range ("yuvj") source would lose what NV12 frames cannot say: its cursor reads
    it on the CPU without trying the GPU (no warning: the next source may be taken)."""
    def encode(path: str, pix_fmt: str, color_range: int = 0) -> str:
        with av.open(path, "w") as out:
            stream = out.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 96, 64, pix_fmt
            stream.codec_context.color_range = color_range
            for i, rgb in enumerate(np.random.default_rng(0).integers(0, 255, (6, 64, 96, 3), dtype=np.uint8)):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
                frame.pts, frame.color_range = i, color_range
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        return path

    path = encode(str(tmp_path / "444.mp4"), "yuv444p")
    full_range = encode(str(tmp_path / "full.mp4"), "yuv420p", color_range=2)  # FFmpeg reads it as yuvj420p
    nvdec._UNAVAILABLE.clear()
    for source, fmt in ((path, "yuv444p"), (full_range, "yuvj420p")):
        with av.open(source) as c:
            assert c.streams.video[0].codec_context.format.name == fmt
            assert nvdec.hw_frames_context(c.streams.video[0]) is None
    assert not nvdec._UNAVAILABLE
    cursor = FrameCursor(path, 0, None, nvdec=nvdec.GPU_FRAMES)
    assert not cursor.on_gpu and len(list(cursor.take(0, 5))) == 6
    cursor.close()


def test_a_process_keeps_one_idle_decoder_of_each_kind(video):
    """Each idle decoder holds an NVDEC session and GPU memory: a released one replaces the idle one of
    its kind (sources from another encoder, another extradata), it does not pile up beside it."""
    nvdec._IDLE.clear()
    with av.open(video) as c:
        stream = c.streams.video[0]
        contexts = []
        for extradata in (stream.codec_context.extradata, stream.codec_context.extradata + b"\0"):
            ctx = av.CodecContext.create("h264", "r")
            ctx.extradata = extradata
            ctx.open()
            contexts.append(ctx)
    nvdec.release(contexts[0])
    nvdec.release(contexts[1])
    nvdec.release(contexts[0], nvdec.GPU_FRAMES)
    assert sorted((k[0], k[2] == bytes(contexts[1].extradata)) for k in nvdec._IDLE) == [
        (nvdec.CUVID, True), (nvdec.GPU_FRAMES, False)]
    nvdec._IDLE.clear()


@pytest.fixture
def tagged_by_its_container(tmp_path, video) -> str:
    """``video``'s packets remuxed into an mp4 whose ``colr`` box says BT.709, the bitstream saying
    nothing: the CPU decoder's frames carry the container's tags, a GPU decoder's would not."""
    path = str(tmp_path / "colr.mp4")
    with av.open(video) as src, av.open(path, "w") as out:
        stream = src.streams.video[0]
        tagged = out.add_stream_from_template(stream)
        tagged.codec_context.colorspace = tagged.codec_context.color_primaries = tagged.codec_context.color_trc = 1
        for packet in src.demux(stream):
            if packet.dts is not None:
                packet.stream = tagged
                out.mux(packet)
    with av.open(path) as c:
        assert next(c.decode(video=0)).colorspace == 1
    return path


@pytest.mark.parametrize("decoder", ["nvdec", "nvdec_gpu_frames"])
def test_a_source_tagged_only_by_its_container_scores_as_on_the_cpu(tmp_path, tagged_by_its_container, stand_in,
                                                                     gpu_frames_stand_in, decoder):
    """A GPU decoder's own context sees the bitstream only (h264_cuvid tags frames from its parser):
    the cursor gives its frames the stream's colour tags where they have none, so BT.709 converts as
    BT.709 and the scores are the CPU decoder's."""
    cpu = _scored_and_extracted(tmp_path / "cpu", tagged_by_its_container, "cpu")
    gpu = _scored_and_extracted(tmp_path / "gpu", tagged_by_its_container, decoder)
    assert gpu[2] and not cpu[2]
    assert gpu[0] == cpu[0] and gpu[1] == cpu[1]
