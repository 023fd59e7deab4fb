"""The caption stage: a long and a short caption per kept clip, from one VLM actor per worker.

Captioning is the pipeline's throughput ceiling, so rows are captioned in batches; one clip that
cannot be read or captioned fails alone while the rest of the batch keeps its captions.

Caption QA (``captioning.qa``): each new caption is embedded with the pipeline's CLIP model and
compared with the mean embedding of the frames it was generated from (``vidcorpus/clip_models.py``,
the CLIP code the filters' scorer uses too).
Scores, keyed by the caption version so several versions coexist: ``caption_clip`` (long),
``caption_clip_short`` and ``caption_degenerate`` (1.0 when the long caption is empty or junk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from vidcorpus.captioning.caption_inputs import downscale_frames
from vidcorpus.captioning.captioner import Captioner, Generation, load_captioner
from vidcorpus.captioning.cleanup import clean_caption, is_degenerate
from vidcorpus.compile_cache import artifacts_url, load_artifacts, save_artifacts
from vidcorpus.config import caption_batch_size, clip_batch_size
from vidcorpus.media import is_image, read_frames
from vidcorpus.schemas import add_scores, score
from vidcorpus.stage import Resources, Stage

KINDS = ("long", "short")

# The set-up's steps and their times (models, the compile cache, each warm-up shape): a caption actor
# can set up for minutes while the job waits, and these lines in its worker log say on what.
setup_log = logging.getLogger("vidcorpus.captioning.setup")


class CaptionStage(Stage):
    name: ClassVar[str] = "caption"
    # Fractional CPUs so actors never starve read tasks; a whole GPU each where there are GPUs
    # (the runner scales GPU stages that are alive at once to share one; vidcorpus/stage_settings.py).
    resources: ClassVar[Resources] = Resources(cpus=0.25, gpus=1.0, actor=True)
    kept_only: ClassVar[bool] = True  # only clips a recipe kept are worth the most expensive stage

    captioner: Captioner
    # Frames read ahead of the batch's turn (``read_ahead``), by clip: process_rows takes them.
    ahead: dict[tuple, np.ndarray | Exception] | None = None
    # The keys of the compile artifacts this actor loaded at set-up (None: no file): what it need not write back.
    cache_loaded: frozenset | None = None

    def setup(self) -> None:
        cap = self.config.captioning
        source = self.config.models.captioner
        if not source:
            raise ValueError("models.captioner is not set: resolve the config with vidcorpus.jobs.models.resolve_models")
        began = time.time()
        self.captioner = load_captioner(source, batch_size=caption_batch_size(self.config), min_new_tokens=cap.min_new_tokens,
                                        prompt_version=cap.prompt_version, decode=cap.decode,
                                        repetition_penalty=cap.repetition_penalty, max_pixels=cap.max_pixels,
                                        compile_prefill=cap.compile_prefill, compile_decode=cap.compile_decode,
                                        probe_rows=cap.probe_rows, prefetch_min_batch=cap.prefetch_min_batch,
                                        pad_shapes=cap.pad_shapes)
        compiles = self.captioner.compile_prefill or self.captioner.compile_decode
        self.captioner.pad_batches = compiles if cap.pad_batches is None else cap.pad_batches
        self.clip = None
        if cap.qa:
            # inside: the CLIP code imports open_clip (seconds), which a captioner
            # without QA never needs
            from vidcorpus.clip_models import clip_model_id, load_clip

            m = self.config.models
            if not (m.clip_model and m.clip_pretrained):
                raise ValueError("captioning.qa needs models.clip_model/clip_pretrained (jobs.models.resolve_models)")
            model, preprocess, tokenizer = load_clip(m.clip_model, m.clip_pretrained, self.captioner.device)
            self.clip = (model, preprocess, tokenizer, clip_model_id(m.clip_model, m.clip_pretrained))
        warm = cap.warmup if cap.warmup is not None else self.captioner.device.type == "cuda"
        setup_log.info(f"caption set-up: models loaded on {self.captioner.device} in {time.time() - began:.1f} s")
        self.compile_cache_url = self._compile_cache_url() if compiles and cap.compile_cache else None
        self.cache_loaded = load_artifacts(self.compile_cache_url) if self.compile_cache_url else None
        if self.compile_cache_url:
            setup_log.info(f"caption set-up: compile cache {self.compile_cache_url}: "
                           + (f"{len(self.cache_loaded)} artifacts loaded" if self.cache_loaded is not None
                              else "no file yet"))
        if warm:
            try:
                self.warm_up()
            except Exception as exc:  # noqa: BLE001 - a speed-up: the job goes on, its first batches compile
                warnings.warn(f"captioning warm-up failed ({type(exc).__name__}: {str(exc)[:200]}); the first "
                              "batches compile instead", RuntimeWarning, stacklevel=1)
        setup_log.info(f"caption set-up: done in {time.time() - began:.1f} s")

    def _save_compile_cache(self, partial: bool) -> None:
        """Write what this process compiled so far (vidcorpus/compile_cache.py), after each warm-up
        shape: a job stopped while a later shape compiles still leaves the earlier ones to the next job
        (run 12a's first shape took 248 s, and the job stopped during its second with no file written).
        A ``partial`` set goes only where there is no file yet (never over another actor's fuller one).
        A failed save costs a warning, never the later shapes' warm-up."""
        if not self.compile_cache_url:
            return
        began = time.time()
        try:
            saved = save_artifacts(self.compile_cache_url, self.cache_loaded, partial=partial)
        except Exception as exc:  # noqa: BLE001 - a speed-up for the next job: this one goes on
            warnings.warn(f"compile cache not saved ({type(exc).__name__}: {str(exc)[:200]})", RuntimeWarning,
                          stacklevel=1)
            return
        setup_log.info(f"caption set-up: compile cache {'written' if saved else 'left as it was'}"
                       f"{' (the shapes so far)' if partial else ''} in {time.time() - began:.1f} s")

    def _compile_cache_url(self) -> str:
        """The compile cache file of this captioner and these settings (vidcorpus/compile_cache.py):
        jobs that compile other graphs (another model, batch or frame size) keep files of their own."""
        cap, c = self.config.captioning, self.captioner
        settings = [self.config.models.captioner, c.batch_size, c.pad_batches, c.pad_sizes(), c.compile_prefill,
                    c.compile_decode, cap.frames_per_clip, cap.max_pixels, cap.decode, cap.max_new_tokens,
                    cap.short_max_new_tokens]
        digest = hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:12]
        folder = cap.compile_cache_dir or self.config.url("cache", "torch_compile")
        return artifacts_url(folder, f"caption-{digest}", c.device)

    def warm_up(self) -> None:
        """Caption dummy clips (mid-grey 1280x720 frames, or fewer pixels under captioning.max_pixels)
        at the full batch size, both kinds, so the compiles and the fast path's probe run before the
        job's first kept clips arrive (captioning.warmup). With captioning.pad_batches (the default
        where shapes compile) every later batch has one of captioning.pad_shapes shapes: a batch of the
        smallest follows (with one shape, nothing follows), which compiles the shape-generic prefill and
        decoding step that serve the shapes between; without padding, a batch of 2 does that. Clips of
        another frame size still compile their own prefill shape. The compile cache is written after
        each shape."""
        cap = self.config.captioning
        bs = max(1, self.captioner.batch_size)
        w, h = 1280, 720
        if cap.max_pixels and w * h > cap.max_pixels:
            scale = (cap.max_pixels / (w * h)) ** 0.5
            w, h = max(28, int(w * scale)), max(28, int(h * scale))
        frames = np.full((cap.frames_per_clip, h, w, 3), 128, np.uint8)
        limits = {"long": cap.max_new_tokens, "short": cap.short_max_new_tokens}
        sizes = (bs, self.captioner.pad_sizes()[-1]) if self.captioner.pad_batches else (bs, min(2, bs))
        shapes = list(dict.fromkeys(sizes))
        for i, n in enumerate(shapes):
            began = time.time()
            self.captioner.generate_kinds([frames] * n, limits)
            setup_log.info(f"caption set-up: warm-up batch of {n} clips ({w}x{h}, {cap.frames_per_clip} frames) "
                           f"in {time.time() - began:.1f} s")
            self._save_compile_cache(partial=i < len(shapes) - 1)

    def process_rows(self, rows: list[dict]) -> list[dict]:
        cap = self.config.captioning
        failed: list[dict] = []
        good: list[dict] = []
        frames: list[np.ndarray] = []
        for row, got in zip(rows, self._read_all(rows)):
            if isinstance(got, Exception):  # an unreadable clip fails only its own row
                failed.append(self.fail(row, got))
            else:
                frames.append(got)
                good.append(row)

        limits = {"long": cap.max_new_tokens, "short": cap.short_max_new_tokens}
        results = self._generate_isolated(frames, limits)

        out: list[dict] = []
        done: list[tuple[dict, np.ndarray]] = []
        for i, row in enumerate(good):
            errors = [results[k][i] for k in KINDS if isinstance(results[k][i], Exception)]
            if errors:
                failed.append(self.fail(row, errors[0]))
                continue
            new = dict(row)
            new["captions"] = list(row.get("captions") or []) + [
                self._caption_record(kind, results[kind][i], limits[kind], len(frames[i])) for kind in KINDS
            ]
            done.append((new, frames[i]))
        out = [r for r, _ in done]
        if self.clip is not None and done:
            out = self._qa(out, {id(r): f for (r, f) in done})
        return out + failed

    def read_ahead(self, table: pa.Table) -> dict[tuple, np.ndarray | Exception]:
        """The frames of a batch's clips, read before its turn on the model: a caption actor
        (``StageChain`` with ``captioning.read_ahead``) calls this outside its model lock, so the next
        batch's clips decode while the GPU captions this one, and hands the result to ``ahead``. Needs no
        model (it may run while the actor still loads and compiles)."""
        rows = [r for r in table.to_pylist() if self.wants(r) and (r.get("clip_path") or r.get("source_path"))]
        return dict(zip(map(_frames_key, rows), self._read_each(rows)))

    def _read_all(self, rows: list[dict]) -> list[np.ndarray | Exception]:
        """Every row's frames: those read ahead for this batch (set under the actor's lock, taken
        once), the rest read now."""
        ahead, self.ahead = self.ahead or {}, None
        got = [ahead.get(_frames_key(r)) for r in rows]
        todo = [r for r, g in zip(rows, got) if g is None]
        read = iter(self._read_each(todo))
        return [g if g is not None else next(read) for g in got]

    def _read_each(self, rows: list[dict]) -> list[np.ndarray | Exception]:
        """Decoded in threads (PyAV releases the GIL): a GPU batch of 512 clips decoded one after
        another kept the GPU waiting longer than the batch took to caption."""
        threads = self._threads()
        if threads <= 1 or len(rows) <= 1:
            return [self._read(r) for r in rows]
        with ThreadPoolExecutor(threads, thread_name_prefix="caption-decode") as pool:
            return list(pool.map(self._read, rows))

    def _threads(self) -> int:
        return self.config.captioning.decode_threads or min(8, os.cpu_count() or 1)

    def _read(self, row: dict) -> np.ndarray | Exception:
        cap = self.config.captioning
        try:
            clip = row.get("clip_path") or row.get("source_path")
            if not clip:
                raise ValueError("row has no clip_path")
            if is_image(row):  # an image is one frame, captioned as an image
                frames = read_frames(clip, n=1)
            else:
                frames = read_frames(clip, n=cap.frames_per_clip, fps=cap.fps)
            # scaled here, in the reader threads and once per clip, not in generate once per kind on one
            # thread (at 720p and batch 512 that kept an H100 waiting most of each batch)
            return downscale_frames(frames, cap.max_pixels)
        except Exception as exc:  # noqa: BLE001 - returned, failed by the caller
            return exc

    def _qa(self, rows: list[dict], frames_of: dict[int, np.ndarray]) -> list[dict]:
        """CLIP similarity of each new caption and its frames, plus a degenerate flag, as scores."""
        # inside: loaded by setup already (QA on); open_clip off the top as there
        from vidcorpus.clip_models import embed_images, embed_texts

        model, preprocess, tokenizer, clip_id = self.clip
        cap = self.config.captioning
        device = self.captioner.device
        bs = clip_batch_size(self.config, device)
        try:
            flat = [f for r in rows for f in frames_of[id(r)]]
            image_emb = embed_images(model, preprocess, flat, device, bs, threads=self._threads())
            texts = [c["text"] for r in rows for c in r["captions"][-len(KINDS):]]
            text_emb = embed_texts(model, tokenizer, [t or " " for t in texts], device, bs)
        except Exception as exc:  # noqa: BLE001 - QA failing must not lose the captions
            warnings.warn(f"caption QA failed, captions kept without QA scores: {exc!r}", RuntimeWarning, stacklevel=2)
            return rows
        out, start = [], 0
        version = f"{cap.version}/{cap.prompt_version}"
        for i, r in enumerate(rows):
            n = len(frames_of[id(r)])
            mean = image_emb[start:start + n].mean(0)
            mean = mean / mean.norm().clamp_min(1e-12)
            start += n
            new_caps = r["captions"][-len(KINDS):]
            sims = {c["kind"]: float(mean @ text_emb[i * len(KINDS) + k]) for k, c in enumerate(new_caps)}
            long_meta = json.loads(new_caps[0]["meta_json"])
            scores = [
                score("caption_clip", sims["long"] if new_caps[0]["text"] else 0.0, clip_id, version),
                score("caption_clip_short", sims["short"] if new_caps[1]["text"] else 0.0, clip_id, version),
                score("caption_degenerate", float(long_meta["degenerate"]), "rules", version),
            ]
            out.extend(self.safe_call(lambda row, scores=scores: add_scores(row, scores), r))
        return out

    def _generate_isolated(self, frames: list[np.ndarray], limits: dict[str, int]
                           ) -> dict[str, list[Generation | Exception]]:
        """Both kinds for all clips at once (sharing each batch's vision pass); if that fails, clip by
        clip and kind by kind, so one bad clip fails alone."""
        if not frames:
            return {kind: [] for kind in limits}
        try:
            return {k: list(v) for k, v in self.captioner.generate_kinds(frames, limits).items()}
        except Exception:  # noqa: BLE001 - retried below, kind by kind, to find the culprit
            pass
        out: dict[str, list[Generation | Exception]] = {}
        for kind, max_new_tokens in limits.items():
            try:
                out[kind] = list(self.captioner.generate(frames, kind, max_new_tokens))
                continue
            except Exception:  # noqa: BLE001 - retried per clip
                pass
            out[kind] = []
            for f in frames:  # one clip, not a padded batch, per call
                try:
                    out[kind].append(self.captioner.generate([f], kind, max_new_tokens, pad=False)[0])
                except Exception as exc:  # noqa: BLE001
                    out[kind].append(exc)
        return out

    def _caption_record(self, kind: str, gen: Generation, max_new_tokens: int, n_frames: int) -> dict:
        cap = self.config.captioning
        text, edits = clean_caption(gen.text, truncated=gen.n_tokens >= max_new_tokens)
        meta = {
            "generation": self.captioner.generation_settings(max_new_tokens),
            "input": self.captioner.input_mode,
            "frames": n_frames,
            "new_tokens": gen.n_tokens,
            "dtype": str(self.captioner.dtype).removeprefix("torch."),
            "edits": edits,
            "degenerate": is_degenerate(text),
        }
        if edits:
            meta["raw"] = gen.text
        return {
            "version": cap.version,
            "kind": kind,
            "text": text,
            "model": self.captioner.name or Path(str(self.config.models.captioner)).name,
            "prompt_version": cap.prompt_version,
            "meta_json": json.dumps(meta, sort_keys=True),
            "decode": gen.decode,  # which path wrote it: a fast path that switched itself off shows here
        }


def _frames_key(row: dict) -> tuple:
    """What a clip's caption frames depend on: the clip and the file they are read from."""
    return row.get("clip_id"), row.get("clip_path") or row.get("source_path")
