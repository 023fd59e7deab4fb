"""CLIP scores: LAION aesthetic score, CLIP image-text alignment and the clip embedding, batched.

Per clip, filters.frames_per_clip frames (first, middle, last for 3; one for an image) are embedded
with the CLIP image tower and L2-normalised. Scores:
  aesthetic      mean over frames of the aesthetic head on each frame embedding (LAION scale ~1..10
                 with real weights; arbitrary with tiny random ones)
  aesthetic_min  minimum over frames of the same
  clip_text      cosine similarity of the normalised mean frame embedding and the normalised text
                 embedding of row["text"] (the original text); only when the text is non-empty
  clip_text_<version>_<kind>  the same against every caption of the row (e.g. clip_text_v1_long);
                 CaptionAlignStage adds these after captioning, from the stored embedding
The row also gets ``embedding`` (the normalised mean frame embedding, float32), ``embedding_model``
and ``content_sha256`` (of the clip file's bytes): the driver stores embeddings in Parquet and uses
both for duplicate detection (filters/dedup.py).

Throughput: the file is read and hashed, and its K frames decoded with PyAV (filters/clip_frames.py),
in worker processes (filters/frame_decoder.py)
(filters.decode_threads; PyAV holds the GIL while decoding) that write centre squares into
shared-memory slots, several clips per task, while the GPU works on earlier frames. Workers open
clips without the stream-info probe's decoding and convert to RGB through one cached single-thread
swscale context (vidcorpus/frame_seek.py). Frames go to the device as uint8 through pinned memory;
crop, resize (bicubic, antialiased), scaling and normalisation run there (gpu_preprocess). On a GPU
the weights are bf16 (filters.clip_precision). The same code runs on the CPU for the tiny preset.
Clips from precise extraction carry a stills file (row ``stills_path``, vidcorpus/stills.py: the K
sampled frames as one small JPEG written during extraction): the workers then decode that instead
of the clip (the clip is still read and hashed). A missing or broken stills file falls back to
decoding the clip, at the same frame positions.

Model strings: "<clip_model>/<tag>" (e.g. "ViT-L-14/openai"), or the model name for a weights file;
the aesthetic score adds "+<head file stem>".
"""

from __future__ import annotations

import os
import re
import weakref
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import ClassVar

import numpy as np

from vidcorpus.config import clip_batch_size
from vidcorpus.filters.clip_frames import ScaleToModel
from vidcorpus.filters.frame_decoder import DecodeAhead, FrameDecoder
from vidcorpus.filters.stills_probe import StillsCheck
from vidcorpus.media import is_image
from vidcorpus.schemas import add_scores, score
from vidcorpus.stage import Resources, Stage

CLIP_SCORE_VERSION = "clip-v2"  # v2: crop/resize/normalise on the device instead of PIL


def caption_score_name(caption: dict) -> str:
    """Scorer name of the alignment with one caption: clip_text_<version>_<kind>, a plain identifier."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{caption.get('version') or ''}_{caption.get('kind') or ''}".lower()).strip("_")
    return f"clip_text_{slug}" if slug else "clip_text_caption"


def gpu_preprocess(frames: list[np.ndarray], size: int, mean_t, std_t, dtype, pin: bool):
    """(N, 3, size, size) model input from RGB uint8 frames, computed on the device of mean_t.

    open_clip's eval transform (resize the short side to `size`, bicubic; center crop; scale to
    0..1; normalise), reordered as crop-then-resize so only the kept pixels are resampled. Frames of
    one shape travel together as one uint8 tensor (pinned when `pin`, copied without blocking).
    mean_t and std_t are (1, 3, 1, 1) float32 tensors on the device, in 0..255 units.
    """
    import torch  # inside: torch only in the workers that score (the runner imports this stage class without torch)
    import torch.nn.functional as F

    device = mean_t.device
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.shape, []).append(i)
    parts = []
    for shape, idx in groups.items():
        h, w = shape[:2]
        buf = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=pin)
        arr = buf.numpy()
        for j, i in enumerate(idx):
            arr[j] = frames[i]
        x = buf.to(device, non_blocking=pin)
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top:top + side, left:left + side].permute(0, 3, 1, 2).float()
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        parts.append(((x - mean_t) / std_t).to(dtype))
    if len(parts) == 1:
        return parts[0]
    out = torch.empty((len(frames), 3, size, size), device=device, dtype=dtype)
    for (_, idx), x in zip(groups.items(), parts):  # mixed sizes: scatter back into input order
        for j, i in enumerate(idx):
            out[i].copy_(x[j])
    return out


def clip_means(emb, counts: list[int]):
    """Normalised mean of each clip's frame embeddings; ``emb`` holds the clips' frames one clip
    after the other (``counts`` frames each). One reshape when every clip has the same count (the
    usual batch: K frames per video clip), else one small reduction per clip."""
    import torch  # inside: torch only in the workers that score (the runner imports this stage class without torch)
    import torch.nn.functional as F

    if len(set(counts)) == 1:
        return F.normalize(emb.view(len(counts), counts[0], -1).mean(1), dim=1)
    starts = [0]
    for n in counts[:-1]:
        starts.append(starts[-1] + n)
    return torch.stack([F.normalize(emb[s:s + n].mean(0), dim=0) for s, n in zip(starts, counts)])


class ClipScoreStage(Stage):
    """Aesthetic and CLIP-text scores and the clip embedding; holds the models, so it runs as an
    actor (GPU when there is one)."""

    name: ClassVar[str] = "clip"
    resources: ClassVar[Resources] = Resources(cpus=0.25, gpus=1.0, actor=True)
    # Clips per call: stages.clip.batch_rows, default 256 on a GPU (vidcorpus/stage_settings.py).
    # Decode overlaps the model within a call, not across calls, so each call pays one pipeline fill
    # and drain: alone on the H100, 4,096 rows reached 86.7 / 88.8% of model-only where 1,024 gave
    # 85.7 / 83.3% (docs/benchmarks.md, "Larger stage calls"). Inside a streaming job a call waits
    # until that many clips exist (an hour of edited footage holds about 800), so it is smaller.
    # True: frames leave the decode workers resized and cropped to the model's input by FFmpeg's
    # scaler (ScaleToModel); False: center squares, resized on the device (exactly open_clip's
    # bicubic). Benchmarks compare the two. Frames from stills go through the same scaler; it
    # aliases more than the device's antialiased resize (stills vs clip frames of a random-block
    # texture at 64 px: mean abs difference 14.5 of 255 against 4.5 on the device path).
    scale_in_decoder: ClassVar[bool] = False
    # "cuda": each decode worker keeps one NVDEC-backed H.264 decoder for clips whose sampled
    # frames are keyframes (KeyframeDecoder); others, and hosts without one, decode on the CPU.
    # Experimental, off: on the H100 its frames differed from CPU decoding (max abs diff 132, cause
    # not found) and end to end was slower (15 CUDA contexts time-slice with the model), see
    # docs/benchmarks.md. Benchmarks only.
    decode_hwaccel: ClassVar[str | None] = None

    def setup(self) -> None:
        # inside: open_clip and torch only in the workers that score (the runner imports this stage class without torch)
        import open_clip
        import torch

        # inside: the CLIP code imports open_clip and torch (seconds), which importing
        # this module (the runner, a run with filters.clip_scores off) does not need
        from vidcorpus.clip_models import clip_embed_dim, clip_model_id, load_clip
        from vidcorpus.filters.aesthetic_head import load_aesthetic_head

        m = self.config.models
        if not (m.clip_model and m.clip_pretrained and m.aesthetic_head):
            raise ValueError("models.clip_model/clip_pretrained/aesthetic_head must be resolved (jobs.models.resolve_models)")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.preprocess, self.tokenizer = load_clip(m.clip_model, m.clip_pretrained, self.device)
        self.dtype = torch.float32
        if self.device.type == "cuda" and self.config.filters.clip_precision == "bf16":
            self.dtype = torch.bfloat16
            self.model.to(dtype=self.dtype)
        self.head = load_aesthetic_head(m.aesthetic_head, clip_embed_dim(m.clip_model), self.device)
        pre = open_clip.get_model_preprocess_cfg(self.model)
        size = pre.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean_t = torch.tensor(pre["mean"], device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std_t = torch.tensor(pre["std"], device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        # The decoder's scaler does the model's resize and crop (read from the model, not assumed)
        self.decode_scale = None
        if self.scale_in_decoder:
            try:
                self.decode_scale = ScaleToModel(pre.get("size", 224), pre.get("interpolation", "bicubic"),
                                                 pre.get("resize_mode", "shortest"))
            except ValueError:  # a transform the scaler does not do: the device resizes
                self.decode_scale = None
        self.clip_id = clip_model_id(m.clip_model, m.clip_pretrained)
        head_stem = Path(m.aesthetic_head.split("?")[0]).stem
        self.aesthetic_id = f"{self.clip_id}+{head_stem}"
        self.version = f"{CLIP_SCORE_VERSION}-f{self.config.filters.frames_per_clip}"
        self._decoder = None  # worker processes start with the first batch (CaptionAlignStage needs none)

    # -- model calls ------------------------------------------------------------------------------
    def embed_frames(self, frames: list[np.ndarray]):
        """Normalised float32 embeddings and aesthetic values of frames (one model batch)."""
        import torch  # inside: torch only in the workers that score (the runner imports this stage class without torch)

        with torch.inference_mode():
            x = gpu_preprocess(frames, self.image_size, self.mean_t, self.std_t, self.dtype,
                               pin=self.device.type == "cuda")
            emb = self.model.encode_image(x, normalize=True).float()
            aesthetic = self.head(emb).squeeze(1)
        return emb, aesthetic

    def embed_texts(self, texts: list[str]):
        # inside: loaded already by setup; off the top as there (open_clip, torch)
        from vidcorpus.clip_models import embed_texts

        return embed_texts(self.model, self.tokenizer, texts, self.device, clip_batch_size(self.config, self.device))

    def text_scores(self, rows: list[dict], clip_emb) -> list[list[dict]]:
        """Per row: clip_text against the original text and one score per caption (version, kind)."""
        jobs: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            if (row.get("text") or "").strip():
                jobs.append((i, "clip_text", row["text"]))
            for c in row.get("captions") or []:
                if (c.get("text") or "").strip():
                    jobs.append((i, caption_score_name(c), c["text"]))
        out: list[list[dict]] = [[] for _ in rows]
        if not jobs:
            return out
        t = self.embed_texts([j[2] for j in jobs])
        cos = (clip_emb[[j[0] for j in jobs]] * t).sum(1).cpu().numpy()
        for (i, name, _), v in zip(jobs, cos):
            out[i].append(score(name, float(v), self.clip_id, self.version))
        return out

    # -- the batch -------------------------------------------------------------------------------
    def decoder(self) -> FrameDecoder:
        if getattr(self, "_decoder", None) is None:
            k = self.config.filters.frames_per_clip
            bs = max(1, clip_batch_size(self.config, self.device))
            workers = self.config.filters.decode_threads or max(1, min(16, (os.cpu_count() or 2) - 1))
            # enough slots for two model batches in flight plus a queue per worker
            hw = self.decode_hwaccel if self.device.type == "cuda" else None
            self._decoder = FrameDecoder(workers, k, n_slots=2 * (bs // k + 1) + 2 * workers,
                                         scale=getattr(self, "decode_scale", None), hwaccel=hw)
            weakref.finalize(self, self._decoder.close)
        return self._decoder

    def process_rows(self, rows: list[dict]) -> list[dict]:
        import torch  # inside: torch only in the workers that score (the runner imports this stage class without torch)

        k = self.config.filters.frames_per_clip
        bs = max(1, clip_batch_size(self.config, self.device))
        if getattr(self, "_stills", None) is None:
            self._stills = StillsCheck(k)
        rows = self._stills.rows(rows)  # stills only while they match their clips (filters/stills_probe.py)
        run = DecodeAhead(self.decoder(), rows, lambda row: 1 if is_image(row) else k, bs, self.embed_frames, self.fail)
        try:
            run.run()
            if not run.good:
                return run.out
            with torch.inference_mode():
                emb = torch.cat(run.embs)
                aesthetic = torch.cat(run.aes).float().cpu().numpy()
                clip_emb = clip_means(emb, [n for _, _, n, _ in run.good])
                texts = self.text_scores([g[0] for g in run.good], clip_emb)
                clip_np = clip_emb.cpu().numpy().astype(np.float32)
        except BrokenProcessPool as exc:  # a decoder process died (e.g. FFmpeg crashed): fresh pool next batch
            self._decoder.close()
            self._decoder = None
            return run.failed_all(exc)
        except Exception as exc:  # noqa: BLE001 - a model failure fails the batch's rows, not the run
            self._drain(run.jobs)
            return run.failed_all(exc)
        out = run.out
        for i, (row, s, n, digest) in enumerate(run.good):
            a = aesthetic[s:s + n]
            new = [
                score("aesthetic", float(a.mean()), self.aesthetic_id, self.version),
                score("aesthetic_min", float(a.min()), self.aesthetic_id, self.version),
                *texts[i],
            ]
            extra = {"embedding": clip_np[i].tolist(), "embedding_model": self.clip_id, "content_sha256": digest}
            out.extend(self.safe_call(lambda r, new=new, extra=extra: dict(add_scores(r, new), **extra), row))
        return out

    def _drain(self, jobs) -> None:
        """After a failure mid-batch: wait for submitted decodes and give every slot back."""
        dec = self._decoder
        for fut in {id(j[0]): j[0] for j in jobs}.values():
            fut.cancel()
            try:
                fut.result()
            except BaseException:  # noqa: BLE001
                pass
        dec.free = list(range(dec.n_slots))


class CaptionAlignStage(ClipScoreStage):
    """CLIP alignment of every caption of a kept clip with the clip's stored embedding (text tower
    only: the image embedding travels in the row). Runs after captioning."""

    name: ClassVar[str] = "caption_align"
    kept_only: ClassVar[bool] = True
    # The text tower alone: a CPU actor keeps up with captioning and leaves the GPU to the captioner.
    resources: ClassVar[Resources] = Resources(cpus=0.25, gpus=0.0, actor=True)
    batch_rows: ClassVar[int] = 64

    def process_rows(self, rows: list[dict]) -> list[dict]:
        import torch  # inside: torch only in the workers that score (the runner imports this stage class without torch)

        todo = [r for r in rows if r.get("embedding") and r.get("captions")
                and r.get("embedding_model") == self.clip_id]
        rest = [r for r in rows if not any(r is t for t in todo)]
        if not todo:
            return rows
        try:
            with torch.inference_mode():
                emb = torch.tensor([r["embedding"] for r in todo], dtype=torch.float32, device=self.device)
                texts = self.text_scores([dict(r, text=None) for r in todo], emb)
        except Exception as exc:  # noqa: BLE001
            return rest + [self.fail(r, exc) for r in todo]
        return [add_scores(r, t) for r, t in zip(todo, texts)] + rest
