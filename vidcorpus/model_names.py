"""Names of the model architectures this package ships configs for (``vidcorpus/model_configs/``).

A name only, no model code: the presets (which fill ``models.clip_model``), the CLIP model code
(``clip_models.py``, which registers the config) and the filters' aesthetic head (sized from it) all
need it, and none of them should import another for a string.
"""

from __future__ import annotations

# the open_clip config `model_configs/vidcorpus-tiny-clip.json`: the tiny preset's CLIP
TINY_CLIP_NAME = "vidcorpus-tiny-clip"
