"""Clips' frames to a captioner's input tensors on its device, and the next batch's in a thread.

A mixin of ``Captioner`` (``captioning/captioner.py``): the chat template per input mode (video,
multi-image, middle frame), downscaling before the processor, preprocessing on the GPU where the
processor can, and the prefetch thread's stream and event handshake. Apart from the model calls
because it is the CPU half of captioning, which the prefetch overlaps with the GPU half.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vidcorpus.captioning.oom import is_oom
from vidcorpus.captioning.prompts import Prompt


def downscale_frames(frames: np.ndarray, max_pixels: int | None) -> np.ndarray:
    """(N, H, W, 3) frames above ``max_pixels`` scaled down (aspect kept, bicubic); others as they are.
    A function of the setting alone, so a caption actor can read a batch before its model is loaded."""
    h, w = frames.shape[1:3]
    if not max_pixels or h * w <= max_pixels:
        return frames
    scale = (max_pixels / (h * w)) ** 0.5
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])


class CaptionInputs:
    """Input preparation of a Captioner (reads its processor, device, dtype, chat and max_pixels)."""

    def downscale(self, frames: np.ndarray) -> np.ndarray:
        """Frames above ``max_pixels`` scaled down (aspect kept, bicubic); others as they are. Callers
        that read clips in threads call it there (Pillow releases the GIL), once per clip: ``generate``
        then finds nothing left to scale, for any kind."""
        return downscale_frames(frames, self.max_pixels)

    def _inputs(self, chunk: list[np.ndarray], prompt: Prompt, as_image: bool = False) -> dict:
        chunk = [self.downscale(np.asarray(frames)) for frames in chunk]
        if self.chat:
            instruction = (prompt.chat_image or prompt.chat) if as_image else prompt.chat
            multi = not as_image and self.input_mode == "multi_image"

            def text_for(frames: np.ndarray) -> str:
                kind = "image" if as_image else "video"
                media_items = [{"type": "image"}] * len(frames) if multi else [{"type": kind}]
                messages = [{"role": "user", "content": media_items + [{"type": "text", "text": instruction}]}]
                return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

            texts = [text_for(f) for f in chunk]
            if as_image:
                media = {"images": [f[0] for f in chunk]}
            elif multi:  # frames as images, in order: the template put one image entry per frame
                media = {"images": [frame for f in chunk for frame in f]}
            else:
                media = {"videos": chunk}
            as_image = as_image or multi
            if self.device.type == "cuda" and self._gpu_preprocess:
                # resize/normalise frames on the GPU (transformers' torchvision processors take a device)
                key = "images_kwargs" if as_image else "videos_kwargs"
                try:
                    return self.processor(text=texts, padding=True, return_tensors="pt",
                                          **media, **{key: {"device": str(self.device)}})
                except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
                    if is_oom(exc):
                        raise
                    self._gpu_preprocess = False  # this processor cannot: the CPU from now on
            return self.processor(text=texts, padding=True, return_tensors="pt", **media)
        images = [np.asarray(frames[len(frames) // 2]) for frames in chunk]
        if prompt.prefix:
            return self.processor(images=images, text=[prompt.prefix] * len(chunk), return_tensors="pt")
        inputs = self.processor(images=images, return_tensors="pt")
        # No prefix: start from [CLS][SEP] like BLIP's own default (generate swaps in the BOS token).
        ids = [self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]
        inputs["input_ids"] = torch.tensor([ids] * len(chunk), dtype=torch.long)
        return inputs

    def _prepare(self, chunk: list[np.ndarray], prompt: Prompt, as_image: bool):
        """A batch's inputs made in the prefetch thread. On a GPU its copies and kernels go to a stream of
        their own, so they neither wait for nor queue behind the batch that is generating; the event
        says when they are done."""
        with torch.inference_mode():  # thread-local: the same kind of tensors as inputs made in generate
            if self.device.type != "cuda":
                return self._device_inputs(chunk, prompt, as_image), None
            if self._prefetch_stream is None:
                self._prefetch_stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._prefetch_stream):
                inputs = self._device_inputs(chunk, prompt, as_image)
                done = torch.cuda.Event()
                done.record(self._prefetch_stream)
            return inputs, done

    def _take_prepared(self, ready) -> dict | None:
        """Inputs from the prefetch thread, safe to use on the current stream: it waits for their event,
        and the caching allocator learns they are used here (so it does not hand their memory back to
        the prefetch stream while this stream still reads it). None when preparing them ran out of GPU
        memory (the generating batch held it): they are made again here, at the same batch size."""
        try:
            inputs, done = ready.result()
        except Exception as exc:  # noqa: BLE001 - only OOM is retried here
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in inputs.values():
                if t.is_cuda:
                    t.record_stream(stream)
        return inputs

    def _device_inputs(self, chunk: list[np.ndarray], prompt: Prompt, as_image: bool = False) -> dict:
        """The processor's tensors for a batch, on the model's device and (floating point) dtype. One
        processor call at a time: the prefetch thread and the probe share a fast tokenizer, whose
        padding state is not thread-safe ("Already borrowed")."""
        with self._processor_lock:
            inputs = self._inputs(chunk, prompt, as_image)
        return {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                for k, v in inputs.items() if isinstance(v, torch.Tensor)}
