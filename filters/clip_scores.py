"""CLIP scores: LAION aesthetic score and CLIP image-text alignment, batched over clips.

Per clip, filters.frames_per_clip frames (first, middle, last for 3; one for an image) are embedded with the CLIP
image tower and L2-normalised. Scores:
  aesthetic      mean over frames of the aesthetic head on each frame embedding (LAION scale ~1..10
                 with real weights; arbitrary with tiny random ones)
  aesthetic_min  minimum over frames of the same
  clip_text      cosine similarity of the normalised mean frame embedding and the normalised text
                 embedding of row["text"]; only when the text is non-empty
Model strings: "<clip_model>/<tag>" (e.g. "ViT-L-14/openai"), or the model name for a weights file;
the aesthetic score adds "+<head file stem>".
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.scorers import add_scores, is_image, score
from vidcorpus.media import read_frames
from vidcorpus.stage import Resources, Stage

CLIP_SCORE_VERSION = "clip-v1"


def clip_model_id(model_name: str, pretrained: str) -> str:
    is_file = "://" in pretrained or Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin")
    return model_name if is_file else f"{model_name}/{pretrained}"


def embed_images(model, preprocess, frames: list[np.ndarray], device, batch_size: int = 16):
    """L2-normalised CLIP image embeddings (float32, one row per frame), in batches."""
    import torch
    from PIL import Image

    bs = max(1, batch_size)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), bs):
            x = torch.stack([preprocess(Image.fromarray(f)) for f in frames[i:i + bs]]).to(device)
            out.append(model.encode_image(x, normalize=True).float())
    return torch.cat(out)


def embed_texts(model, tokenizer, texts: list[str], device, batch_size: int = 16):
    """L2-normalised CLIP text embeddings (float32, one row per text; long texts are truncated)."""
    import torch

    bs = max(1, batch_size)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            tokens = tokenizer(texts[i:i + bs]).to(device)
            out.append(model.encode_text(tokens, normalize=True).float())
    return torch.cat(out)


class ClipScoreStage(Stage):
    """Aesthetic and CLIP-text scores; holds the models, so it runs as an actor (GPU when there is one)."""

    name: ClassVar[str] = "clip"
    resources: ClassVar[Resources] = Resources(cpus=0.25, actor=True)
    wants_gpu: ClassVar[bool] = True
    batch_rows: ClassVar[int] = 16

    def setup(self) -> None:
        import torch

        from vidcorpus.filters.clip_models import clip_embed_dim, load_aesthetic_head, load_clip

        m = self.config.models
        if not (m.clip_model and m.clip_pretrained and m.aesthetic_head):
            raise ValueError("models.clip_model/clip_pretrained/aesthetic_head must be resolved (presets.resolve_models)")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.preprocess, self.tokenizer = load_clip(m.clip_model, m.clip_pretrained, self.device)
        self.head = load_aesthetic_head(m.aesthetic_head, clip_embed_dim(m.clip_model), self.device)
        self.clip_id = clip_model_id(m.clip_model, m.clip_pretrained)
        head_stem = Path(m.aesthetic_head.split("?")[0]).stem
        self.aesthetic_id = f"{self.clip_id}+{head_stem}"
        self.version = f"{CLIP_SCORE_VERSION}-f{self.config.filters.frames_per_clip}"

    def _frames(self, row: dict) -> np.ndarray:
        if not row.get("clip_path"):
            raise DecodeError("row has no clip_path")
        n = 1 if is_image(row) else self.config.filters.frames_per_clip  # an image is one frame, once
        return read_frames(row["clip_path"], n=n)

    def _embed_images(self, frames: list[np.ndarray]):
        return embed_images(self.model, self.preprocess, frames, self.device, self.config.filters.clip_batch_size)

    def _embed_texts(self, texts: list[str]):
        return embed_texts(self.model, self.tokenizer, texts, self.device, self.config.filters.clip_batch_size)

    def process_rows(self, rows: list[dict]) -> list[dict]:
        import torch

        good: list[tuple[dict, np.ndarray]] = []
        out: list[dict] = []
        for row in rows:
            try:
                good.append((row, self._frames(row)))
            except Exception as exc:  # noqa: BLE001 - an unreadable clip fails its row only
                out.append(self.fail(row, exc))
        if not good:
            return out
        try:
            flat = [f for _, frames in good for f in frames]
            emb = self._embed_images(flat)
            with torch.inference_mode():
                aesthetic = self.head(emb).squeeze(1).float().cpu().numpy()
            text_rows = [i for i, (row, _) in enumerate(good) if (row.get("text") or "").strip()]
            text_emb = self._embed_texts([good[i][0]["text"] for i in text_rows]) if text_rows else None
        except Exception as exc:  # noqa: BLE001 - a model failure fails the batch's rows, not the run
            return out + [self.fail(row, exc) for row, _ in good]
        text_of = {i: k for k, i in enumerate(text_rows)}
        start = 0
        for i, (row, frames) in enumerate(good):
            n = len(frames)
            a = aesthetic[start:start + n]
            e = emb[start:start + n]
            start += n
            new = [
                score("aesthetic", float(a.mean()), self.aesthetic_id, self.version),
                score("aesthetic_min", float(a.min()), self.aesthetic_id, self.version),
            ]
            if i in text_of:
                mean = torch.nn.functional.normalize(e.mean(0), dim=0)
                cos = float(mean @ text_emb[text_of[i]])
                new.append(score("clip_text", cos, self.clip_id, self.version))
            out.extend(self.safe_call(lambda r, new=new: add_scores(r, new), row))
        return out
