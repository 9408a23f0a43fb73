import numpy as np
import pytest

from models.preprocessing import box_of_mask, crop_square, normalize, roi_from_image, square_box, to_gray
from PIL import Image


def test_square_box_slides_inside_instead_of_padding():
    # A lesion touching the left border: the square moves right, stays inside, keeps its side.
    x0, y0, x1, y1 = square_box((0, 40, 20, 60), width=200, height=100, margin=0.1)
    assert (x0, x1 - x0, y1 - y0) == (0, 24, 24)
    assert 0 <= y0 and y1 <= 100


def test_crop_never_has_black_bars_when_image_is_large_enough():
    img = np.full((100, 200), 200, np.uint8)
    crop = crop_square(img, (150, 0, 200, 90), margin=0.1)  # 108 px with margin: shrinks to 100
    assert crop.shape == (100, 100)
    assert crop.min() == 200


def test_crop_larger_than_image_is_reflection_padded():
    img = np.tile(np.arange(1, 41, dtype=np.uint8), (30, 1))  # 30 x 40, no zero anywhere
    crop = crop_square(img, (0, 0, 40, 30), margin=0.25)  # lesion wider than the image is high
    assert crop.shape == (40, 40)
    assert crop.min() >= 1  # reflection repeats tissue, never zeros


def test_roi_and_normalize_shapes_and_range():
    img = (np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)
    roi = roi_from_image(img, (100, 100, 180, 150))
    assert roi.shape == (128, 128) and roi.dtype == np.uint8
    x = normalize(np.stack([roi, roi]))
    assert x.shape == (2, 1, 128, 128)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_to_gray_rescales_16_bit():
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    gray = to_gray(Image.fromarray(arr))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255


def test_box_of_mask():
    m = np.zeros((10, 10), bool)
    assert box_of_mask(m) is None
    m[2:5, 3:8] = True
    assert box_of_mask(m) == (3, 2, 8, 5)


def test_empty_box_is_rejected():
    with pytest.raises(ValueError, match="empty lesion box"):
        square_box((10, 10, 10, 20), 100, 100)
