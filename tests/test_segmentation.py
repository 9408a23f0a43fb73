"""SAM wrapper pieces: the automatic lesion pick, RLE, the embedding cache, Grad-CAM on the served model."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from segment_anything.utils.amg import rle_to_mask

from models.gradcam import grad_cam, logits_and_cam
from models.manifest import load_classifier
from models.preprocessing import box_of_mask, classifier_input, normalize, to_gray
from models.segmentation import Embedding, _pick_lesion, mask_rle
from server.embedding_cache import EmbeddingCache


def record(x, y, w, h, iou=0.9, stability=0.95):
    return {"bbox": [x, y, w, h], "area": w * h, "predicted_iou": iou, "stability_score": stability}


def test_automatic_pick_prefers_lesion_sized_masks_off_the_border():
    background = record(0, 0, 400, 300, iou=0.99)  # the whole field of view
    skin = record(0, 0, 400, 40, iou=0.98)  # touches the border
    speck = record(100, 100, 3, 3, iou=0.99)  # 9 px of 120000: too small
    lesion = record(150, 120, 60, 40, iou=0.90)
    lesser = record(50, 60, 30, 30, iou=0.80)
    assert _pick_lesion([background, skin, speck, lesser, lesion], 400, 300) is lesion
    assert _pick_lesion([background, skin], 400, 300) is skin  # all touch the border: surest lesion-sized mask
    assert _pick_lesion([background, speck], 400, 300) is None


def test_rle_round_trip():
    mask = np.zeros((37, 51), bool)
    mask[5:20, 10:33] = True
    mask[30, 50] = True
    rle = mask_rle(mask)
    assert rle["size"] == [37, 51] and (rle_to_mask(rle) == mask).all()


def embedding(model: str, megabytes: float) -> Embedding:
    return Embedding(model, torch.zeros(int(megabytes * 1024 * 1024 / 4)), (10, 10), (10, 10))


def test_embedding_cache_is_bounded_in_bytes_and_least_recently_used():
    cache = EmbeddingCache(max_bytes=3 * 1024 * 1024)
    for sha in "abc":
        cache.put(sha, embedding("litemedsam", 1))
    assert len(cache) == 3 and cache.nbytes == 3 * 1024 * 1024
    assert cache.get("a", "litemedsam") is not None  # a is now the most recent
    cache.put("d", embedding("litemedsam", 1))
    assert cache.get("b", "litemedsam") is None and cache.get("a", "litemedsam") is not None
    assert cache.get("a", "mobilesam") is None  # the key includes the SAM model
    cache.put("huge", embedding("litemedsam", 4))  # larger than the whole cache: not kept
    assert cache.get("huge", "litemedsam") is None and cache.nbytes <= cache.max_bytes


def test_grad_cam_of_the_served_classifier_follows_the_input(busi_dir):
    model, entry = load_classifier("classifier-us")
    inputs = []
    for name in ("malignant (1)", "benign (1)"):
        folder = busi_dir / name.split(" ")[0]
        gray = to_gray(Image.open(folder / f"{name}.png"))
        mask = np.asarray(Image.open(folder / f"{name}_mask.png").convert("L")) > 0
        inputs.append(classifier_input(gray, box_of_mask(mask), mask if entry.input.channels == 2 else None,
                                       entry.input.size))
    x = normalize(np.stack(inputs))
    cams = grad_cam(model, x)
    assert cams.shape == (2, 128, 128) and torch.isfinite(cams).all()
    assert float(cams.min()) >= 0 and torch.allclose(cams.flatten(1).amax(1), torch.ones(2))
    assert float((cams[0] - cams[1]).abs().mean()) > 0.05  # different images, different maps
    assert not any(p.grad is not None for p in model.parameters())  # no gradients left on the served model
    # the server takes the logits from the map's own forward pass: the same as a plain inference pass
    logits, again = logits_and_cam(model, x)
    with torch.inference_mode():
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert torch.equal(again, cams) and not logits.requires_grad
