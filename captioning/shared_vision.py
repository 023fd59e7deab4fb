"""The long and the short caption of a batch share one pass of the vision tower.

Both kinds caption the same frames, so a chat VLM's vision tower would compute the same patch
embeddings twice; on Qwen2.5-VL it is most of the prefill (docs/benchmarks.md, the captioning
sections). Inside ``SharedVision(model)`` the tower's forward remembers its last input and output:
a call with an equal input (same shape, grid and values: ``torch.equal``, a few milliseconds on a
GPU even at batch 512) returns the remembered output instead of running again. Equality is checked,
never assumed, so a call with other frames simply runs the tower. Outside the context the model is
untouched.

It wraps the instance's ``visual.forward``, which transformers' ``get_video_features`` /
``get_image_features`` call (Qwen2-VL, Qwen2.5-VL); other models pass through unchanged.
``tests/test_captioning_shared.py`` checks the tokens against two separate passes.
"""

from __future__ import annotations

import contextlib

import torch


def _tower(model):
    from vidcorpus.captioning.fast_prefill import _qwen_parts

    vision, _inner, _layers = _qwen_parts(model)
    return vision


def _copy(out):
    """A fresh container around the same tensors: ``get_video_features`` reassigns the output's
    ``pooler_output`` (splitting it per clip), so a remembered output must not be handed out twice."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "items") and hasattr(out, "to_tuple"):  # a transformers ModelOutput
        return type(out)(**dict(out.items()))
    return out


class SharedVision(contextlib.AbstractContextManager):
    """Within the context, the vision tower runs once per distinct input (see the module docstring)."""

    def __init__(self, model):
        self.tower = _tower(model)
        self.hits = 0  # (tests, profiles) calls answered from memory
        self.runs = 0
        self._last: tuple | None = None  # (pixels, grid, output)
        self._undo: contextlib.ExitStack | None = None

    def __enter__(self):
        if self.tower is None:
            return self
        from vidcorpus.captioning.fast_prefill import _set

        original = self.tower.forward
        self._undo = contextlib.ExitStack()

        def forward(pixels, grid_thw=None, *args, **kwargs):
            last = self._last
            if (last is not None and not args and isinstance(pixels, torch.Tensor) and pixels.shape == last[0].shape
                    and pixels.dtype == last[0].dtype and _same(grid_thw, last[1]) and torch.equal(pixels, last[0])):
                self.hits += 1
                return _copy(last[2])
            out = original(pixels, grid_thw, *args, **kwargs)
            self.runs += 1
            self._last = (pixels, grid_thw, out) if isinstance(pixels, torch.Tensor) else None
            return _copy(out)

        _set(self._undo, self.tower, "forward", forward)
        return self

    def __exit__(self, *exc):
        self._last = None  # the batch's pixels and features: freed with the context
        if self._undo is not None:
            self._undo.close()
            self._undo = None
        return False


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
