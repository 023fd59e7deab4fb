"""black_border measures letterbox bars, not dark colours (issue 21: a dark-blue frame scored 0.78)."""

from __future__ import annotations

import numpy as np
import pytest

from vidcorpus.filters.technical import black_border_fraction, technical_scores

H, W = 90, 160


def _frames(rgb, n=4) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (n, H, W, 3)).copy()


def test_a_plain_dark_blue_frame_has_no_black_border():
    blue = _frames((0, 8, 96))  # luma about 16: "black" to a luma threshold
    assert black_border_fraction(blue) == 0.0
    assert technical_scores({"media_type": "image"}, blue[:1])["black_border"] == 0.0


def test_a_dark_blue_sky_fading_to_light_has_no_black_border():
    sky = _frames((0, 0, 0))
    sky[..., 2] = np.linspace(40, 255, H, dtype=np.uint8)[None, :, None]  # deep blue at the top
    sky[..., 1] = np.linspace(0, 120, H, dtype=np.uint8)[None, :, None]
    assert black_border_fraction(sky) == 0.0


def test_real_bars_around_a_dark_blue_picture_still_count():
    boxed = _frames((0, 8, 96))
    boxed[:, :12] = 0
    boxed[:, -12:] = 3  # near-black, as an encoder leaves it
    assert black_border_fraction(boxed) == pytest.approx(24 / H)
    assert black_border_fraction(_frames((0, 0, 0))) == 1.0  # an all-black frame is all border
