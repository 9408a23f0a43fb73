"""ROI sources: the expert's, a drawn (jittered) box, SAM's mask; training crops what the server crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocessing import classifier_input, jitter_box, to_gray
from models.segmentation import Prompt
from server.engine import Timer
from training.rois.prepare import prepared
from training.rois.sources import SamViews, drawn_box, load_inputs


@pytest.fixture(scope="module")
def records(busi_dir):
    from training.datasets.roi_table import lesions
    chosen = lesions(prepared(busi_dir.parent), "us")
    return [r for r in chosen if r.label == "benign"][:3] + [r for r in chosen if r.label == "malignant"][:3]


def test_jittered_box_moves_each_side_by_at_most_five_percent():
    rng = np.random.default_rng(0)
    boxes = [jitter_box((100, 50, 300, 150), 640, 480, rng) for _ in range(200)]
    arr = np.array(boxes)
    assert (np.abs(arr - [100, 50, 300, 150]) <= [10, 5, 10, 5]).all()
    assert arr.std(axis=0).min() > 1  # it does move
    assert jitter_box((0, 0, 640, 480), 640, 480, rng)[2] <= 640  # stays inside the image


def test_sources_give_the_same_crop_frame_with_their_own_masks(records):
    expert = load_inputs(records, "expert", channels=2, progress=False)
    box = load_inputs(records, "box", channels=2, progress=False)
    assert expert.shape == box.shape == (6, 2, 128, 128) and expert.dtype == np.uint8
    assert set(np.unique(expert[:, 1])) <= {0, 255} and (expert[:, 1] > 0).mean() > 0.1
    # A drawn box's mask is a filled rectangle: every row of it is one run.
    rows = box[0, 1] > 0
    assert all(np.diff(r.astype(int)).clip(0).sum() <= 1 for r in rows)
    assert (load_inputs(records, "expert", channels=1, progress=False) == expert[:, 0]).all()
    assert (load_inputs(records, "box", channels=2, progress=False) == box).all()  # fixed seed


def test_sam_source_outlines_the_lesion_and_matches_the_server(records, api):
    sam = load_inputs(records, "sam", channels=2, progress=False)
    assert sam.shape == (6, 2, 128, 128)
    dice = SamViews(records, progress=False).dice()
    assert dice.mean() > 0.8  # LiteMedSAM from a jittered box
    # The server, given the same drawn box, segments and crops exactly as training did.
    engine = api.services.engine
    r = records[3]
    rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
    box = drawn_box(r, rgb.shape[:2], seed=0)
    seg = engine.segment("test-" + r.lesion_id, rgb, "us", Prompt(box=list(box)), Timer())
    served = classifier_input(to_gray(rgb), seg.box, seg.mask)
    assert np.array_equal(served, sam[3])


def test_sam_masks_fill_the_embedding_cache_in_the_same_pass(records, api, tmp_path, monkeypatch):
    from training.rois.sam_embeddings import EmbeddingWriter, Embeddings, cache_path, encoder_identity, is_cached
    # An empty cache of its own: masks another test cached for these lesions would skip the pass under test
    monkeypatch.setenv("BRANET_CACHE", str(tmp_path))
    load_inputs(records, "sam", channels=2, progress=False)  # SamViews' pass
    path = cache_path(records, "litemedsam")
    assert is_cached(path) and not list(path.parent.glob("*.tmp.npy"))
    rgb = np.asarray(Image.open(records[3].image_path).convert("RGB"))
    fresh = api.services.engine.segmenters["litemedsam"].encode(rgb)
    cached = Embeddings(records, "litemedsam", progress=False)
    assert cached.original_size[3] == tuple(fresh.original_size) and cached.input_size[3] == tuple(fresh.input_size)
    assert torch.allclose(cached[3], fresh.features.float(), atol=2e-3, rtol=1e-2)  # fp16 of the same encoding
    # A pass that stops half-way leaves no cache file behind, so the next run computes it whole.
    target = path.with_name("interrupted.npy")
    with pytest.raises(RuntimeError):
        with EmbeddingWriter(target, [r.image_path for r in records[:2]], encoder_identity("litemedsam")) as writer:
            writer.add(fresh)
            raise RuntimeError("stopped")
    assert not target.exists() and not list(path.parent.glob("*.tmp.npy"))


def test_another_list_of_images_copies_the_embeddings_a_cache_file_holds(records, tmp_path, monkeypatch):
    from models.segmentation import Embedding
    from training.rois.sam_embeddings import EmbeddingWriter, Embeddings, cache_path, encoder_identity
    monkeypatch.setenv("BRANET_CACHE", str(tmp_path))
    first = records[:3]
    full = Embeddings(first, "litemedsam", progress=False)
    # A file whose rows are marked (zeros, an odd size) for two images: another list must copy them, not encode
    marked = [Embedding("litemedsam", torch.zeros(1, 256, 64, 64), (7, 9), (256, 200)) for _ in range(2)]
    with EmbeddingWriter(cache_path(records[3:5], "litemedsam"), [r.image_path for r in records[3:5]],
                         encoder_identity("litemedsam")) as writer:
        for e in marked:
            writer.add(e)
    other = Embeddings([records[4], records[1], records[5]], "litemedsam", progress=False)
    assert other.path not in (full.path, cache_path(records[3:5], "litemedsam"))
    assert torch.equal(other[1], full[1]) and other.original_size[1] == full.original_size[1]
    assert not other[0].any() and other.original_size[0] == (7, 9) and other.input_size[0] == (256, 200)
    assert other[2].abs().sum() > 0 and other.original_size[2] != (7, 9)  # not held anywhere: encoded
    # A file of another encoder (runtime, precision, checkpoint) is never a source
    with EmbeddingWriter(tmp_path / "sam-embeddings" / "foreign.npy", [records[5].image_path], "another") as writer:
        writer.add(marked[0])
    assert Embeddings([records[5], records[0]], "litemedsam", progress=False)[0].abs().sum() > 0


def test_another_list_of_the_same_lesions_reuses_their_masks(records):
    full = SamViews(records, progress=False)
    full.dice()
    lesion_files = {r.lesion_id: full._lesion_path(r) for r in records}
    stamps = {k: p.stat().st_mtime_ns for k, p in lesion_files.items()}
    part = SamViews(records[4:] + records[:2], progress=False)  # a held-out site's order, say
    assert part.path != full.path
    for j, i in enumerate([4, 5, 0, 1]):
        shape = Image.open(records[i].image_path).size[::-1]
        box_p, mask_p = part.view(j, shape)
        box_f, mask_f = full.view(i, shape)
        assert box_p == box_f and np.array_equal(mask_p, mask_f)
    assert {k: p.stat().st_mtime_ns for k, p in lesion_files.items()} == stamps  # read, not encoded again
