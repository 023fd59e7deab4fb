"""The long and the short caption of a batch share one pass of the vision tower.

Both kinds caption the same frames, so a chat VLM's vision tower would compute the same patch
embeddings twice; on Qwen2.5-VL it is most of the prefill (docs/benchmarks.md, the captioning
sections). Inside ``SharedVision(model)`` the tower's forward remembers its last answer: a call
with an equal input returns it instead of running again. What "equal" means is checked, never
assumed:

- the same shape, dtype, grid and values (``torch.equal``, milliseconds on a GPU at batch 512);
- no other keyword arguments (a caller asking for hidden states or attentions always runs);
- the same patched state of the tower's modules: the fast prefill (``captioning/fast_prefill.py``)
  swaps in its own forwards while it runs, and the first-batch probe and the ``generate`` fallback
  run without them; a probe answered with the fast path's own features would check that path
  against itself.

Only the pooled features are kept (``pooler_output``, what the model scatters into its input
embeddings), one entry per patched state (the probe's small reference batch does not evict the
batch's fast entry), and an entry is dropped before the tower runs again in its state, so at most
one batch's features are held beyond what the prefill itself needs.

It wraps the instance's ``visual.forward``, which transformers' ``get_video_features`` /
``get_image_features`` call (Qwen2-VL, Qwen2.5-VL), only with the transformers versions in
``vidcorpus/fast_paths.py``'s ``TESTED["shared_vision"]``; other models pass through unchanged.
``tests/test_captioning_shared.py`` checks the tokens against separate passes.
"""

from __future__ import annotations

import contextlib

import torch

from vidcorpus.captioning.fast_prefill import patch_attr, qwen_parts


def _tower(model):
    vision, _inner, _layers = qwen_parts(model)
    return vision


def _patched(tower) -> tuple[str, ...]:
    """The tower's submodules whose forward is swapped on the instance (the fast prefill's doing)."""
    return tuple(name for name, m in tower.named_modules()
                 if name and ("forward" in m.__dict__ or "_compiled_call_impl" in m.__dict__))


def _kept(out):
    """What a later call gets: the tensor, or a fresh output holding only ``pooler_output`` (callers
    reassign that field, so one object is never handed out twice)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple") and getattr(out, "pooler_output", None) is not None:
        return type(out)(pooler_output=out.pooler_output)
    return None  # an output of another form: not shared


def _answer(kept):
    return kept if isinstance(kept, torch.Tensor) else type(kept)(pooler_output=kept.pooler_output)


class SharedVision(contextlib.AbstractContextManager):
    """Within the context, the vision tower runs once per distinct input (see the module docstring)."""

    def __init__(self, model):
        self.tower = _tower(model)
        self.hits = 0  # (tests, profiles) calls answered from memory
        self.runs = 0
        self._last: dict[tuple, tuple] = {}  # patched state -> (pixels, grid, kept output)
        self._undo: contextlib.ExitStack | None = None

    def _matches(self, pixels, grid_thw, patched) -> bool:
        last = self._last.get(patched)
        return (last is not None and isinstance(pixels, torch.Tensor) and pixels.shape == last[0].shape
                and pixels.dtype == last[0].dtype and _same(grid_thw, last[1]) and torch.equal(pixels, last[0]))

    def __enter__(self):
        if self.tower is None:
            return self

        original = self.tower.forward
        self._undo = contextlib.ExitStack()

        def forward(pixels, grid_thw=None, *args, **kwargs):
            if args or kwargs:  # outputs asked for beyond the features: never shared
                return original(pixels, grid_thw, *args, **kwargs)
            patched = _patched(self.tower)
            if self._matches(pixels, grid_thw, patched):
                self.hits += 1
                return _answer(self._last[patched][2])
            self._last.pop(patched, None)  # the old entry's memory is free before the tower runs again
            out = original(pixels, grid_thw)
            self.runs += 1
            kept = _kept(out) if isinstance(pixels, torch.Tensor) else None
            if kept is not None:
                self._last[patched] = (pixels, grid_thw, kept)
            return out  # this caller's own object, whole; later callers get the kept features

        patch_attr(self._undo, self.tower, "forward", forward)
        return self

    def __exit__(self, *exc):
        self._last = {}  # the batch's pixels and features: freed with the context
        if self._undo is not None:
            self._undo.close()
            self._undo = None
        return False


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
