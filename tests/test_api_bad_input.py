"""Bad input: each gets a clear 4xx naming the problem, the server stays up, nothing partial is stored;
odd but valid images (16-bit, palette, RGBA, CMYK, EXIF-rotated) are decoded correctly."""
from __future__ import annotations

import base64
import io
import json
import re
import sqlite3
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin


def encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def scan(size=(200, 150)) -> Image.Image:
    """A lesion-like dark ellipse on speckle: small, fast to encode."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    image = 120 + 30 * rng.standard_normal((h, w))
    image[((xx - w / 2) / (w / 5)) ** 2 + ((yy - h / 2) / (h / 5)) ** 2 < 1] = 30
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def stored(api) -> tuple[int, int, int]:
    db = sqlite3.connect(api.home / "branet.sqlite3")
    counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "analyses")]
    db.close()
    return counts[0], counts[1], len(list((api.home / "images").glob("*/*")))


def upload(api, headers, data: bytes, modality="us", name="scan.png"):
    return api.post("/v1/images", files={"file": (name, data)}, data={"modality": modality}, headers=headers)


def analyze(api, headers, data: bytes, prompt=None, modality="us"):
    form = {"modality": modality} | ({"prompt": prompt if isinstance(prompt, str) else json.dumps(prompt)}
                                    if prompt is not None else {})
    return api.post("/v1/analyses", files={"file": ("scan.png", data)}, data=form, headers=headers)


def png_declaring(width: int, height: int, rows: int = 4) -> bytes:
    """A real PNG (valid chunks and CRCs) whose IHDR declares width x height one-bit pixels, with the
    compressed data of only its first rows: a few hundred bytes that say "decode 900 M pixels"."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale, deflate, no interlace
    idat = zlib.compress((b"\0" + b"\xff" * ((width + 7) // 8)) * rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb() -> bytes:
    return png_declaring(30000, 30000)


def jpeg_bomb() -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to declare 30000 x 30000."""
    data = bytearray(encode(scan(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noisy_mask(size=(200, 150)) -> bytes:
    """A mask PNG of the image's size whose compressed data is large enough to cut in the middle."""
    rng = np.random.default_rng(1)
    return encode(Image.fromarray((rng.random(size[::-1]) > 0.5).astype(np.uint8) * 255))


# Pillow's own texts: object addresses, its internal wording. None of it may reach a client.
PILLOW_TEXT = re.compile(r"\b0x[0-9a-f]{6,}|<_io|BytesIO|PIL|cannot identify|bytes not processed|DecompressionBomb")


BAD_UPLOADS = {
    "not an image, named .png": (lambda: b"GIF89a not really" * 10, 415, "not a PNG or JPEG"),
    "text": (lambda: b"hello", 415, "not a PNG or JPEG"),
    "empty": (lambda: b"", 422, "empty"),
    "truncated png": (lambda: encode(scan())[:400], 422, "truncated or corrupt"),
    "corrupt jpeg": (lambda: encode(scan(), "JPEG")[:3] + bytes(range(256)) * 8, 422, "cannot be decoded"),
    "decompression bomb": (bomb, 422, "30000x30000 = 900000000 pixels, the limit is 40000000"),
    "jpeg decompression bomb": (jpeg_bomb, 422, "30000x30000 = 900000000 pixels, the limit is"),
    "1x1": (lambda: encode(Image.new("L", (1, 1))), 422, "at least 16 pixels"),
    "huge aspect ratio": (lambda: encode(Image.new("L", (2000, 40))), 422, "long side may be at most"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_nothing_is_stored(api, alice, case):
    make, status, message = BAD_UPLOADS[case]
    before = stored(api)
    for res in (upload(api, alice, make()), analyze(api, alice, make(), {"box": [10, 10, 50, 50]})):
        assert res.status_code == status, res.text
        assert message in res.json()["error"]["message"]
        assert not PILLOW_TEXT.search(res.text), res.text
    assert stored(api) == before
    assert api.get("/healthz").status_code == 200


def test_oversized_upload_is_refused_while_streaming(api, alice):
    before = stored(api)
    big = encode(scan()) + b"\0" * (11 * 1024 * 1024)
    res = upload(api, alice, big)
    assert res.status_code == 413 and "10 MB" in res.json()["error"]["message"]

    sent = {"bytes": 0}

    def chunks():  # no Content-Length: the limit must bite on the bytes as they arrive
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="modality"\r\n\r\nus\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(64):
            sent["bytes"] += 1024 * 1024
            yield b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 - 8)
    res = api.post("/v1/images", content=chunks(), headers={**alice, "Content-Type": "multipart/form-data; boundary=xyz"})
    assert res.status_code == 413
    assert stored(api) == before


BAD_PROMPTS = {
    "box outside": ({"box": [10, 10, 500, 100]}, "not a non-empty box inside the 200x150 image"),
    "box inverted": ({"box": [100, 100, 10, 10]}, "not a non-empty box"),
    "box of three": ({"box": [1, 2, 3]}, "box"),
    "point outside": ({"points": [[250, 10, 1]]}, "outside the 200x150 image"),
    "only negative points": ({"points": [[20, 10, 0]]}, "at least one positive"),
    "point label 2": ({"points": [[20, 10, 2]]}, "each point is [x, y, 1|0]"),
    "two kinds": ({"box": [1, 1, 9, 9], "points": [[5, 5, 1]]}, "not box and points"),
    "unknown key": ({"polygon": [[1, 1]]}, "polygon"),
    "not json": ("{box: [1,2", "prompt is not valid"),
    "mask wrong size": ({"mask": b64(encode(Image.new("L", (20, 20), 255)))}, "is 20x20, the image is 200x150"),
    "mask larger than the image": ({"mask": b64(encode(Image.new("L", (400, 300), 255)))},
                                   "prompt mask is 400x300, the image is 200x150"),
    "mask bomb": ({"mask": b64(bomb())}, "prompt mask is 30000x30000, the image is 200x150"),
    "mask truncated": ({"mask": b64(noisy_mask()[:800])}, "prompt mask's PNG data cannot be decoded (truncated"),
    "mask header cut": ({"mask": b64(noisy_mask()[:20])}, "its header gives no size"),
    "mask jpeg": ({"mask": b64(encode(scan(), "JPEG"))}, "not a base64 PNG"),
    "mask empty": ({"mask": b64(encode(Image.new("L", (200, 150))))}, "prompt mask is empty"),
    "mask not png": ({"mask": "bm90IGEgcG5n"}, "not a base64 PNG"),
    "mask not base64": ({"mask": "not base64!"}, "not a base64 PNG"),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompts_are_422_naming_the_problem(api, alice, case):
    prompt, message = BAD_PROMPTS[case]
    before = stored(api)
    res = analyze(api, alice, encode(scan()), prompt)
    assert res.status_code == 422, res.text
    assert message in res.json()["error"]["message"]
    assert not PILLOW_TEXT.search(res.text), res.text
    assert stored(api) == before


def test_mask_prompts_on_a_stored_image_are_checked_before_decoding(api, alice):
    """The segment route (a stored image, JSON prompt) refuses a bomb mask from its header, at once,
    with our message; a good mask of the image's size still outlines the lesion."""
    image_id = upload(api, alice, encode(scan())).json()["image_id"]
    url = f"/v1/images/{image_id}/segment"
    start = time.perf_counter()
    res = api.post(url, json={"prompt": {"mask": b64(bomb())}}, headers=alice)
    assert res.status_code == 422, res.text
    assert res.json()["error"] == {"code": "invalid_prompt",
                                   "message": "the prompt mask is 30000x30000, the image is 200x150"}
    assert time.perf_counter() - start < 5
    res = api.post("/v1/analyses", json={"image_id": image_id, "prompt": {"mask": b64(noisy_mask()[:800])}},
                   headers=alice)
    assert res.status_code == 422 and not PILLOW_TEXT.search(res.text), res.text
    drawn = np.zeros((150, 200), np.uint8)
    drawn[55:95, 75:125] = 255
    res = api.post(url, json={"prompt": {"mask": b64(encode(Image.fromarray(drawn)))}}, headers=alice)
    assert res.status_code == 200, res.text
    assert res.json()["prompt"] == "mask"


def test_bad_json_requests_and_modalities(api, alice):
    image_id = upload(api, alice, encode(scan())).json()["image_id"]
    checks = [
        (upload(api, alice, encode(scan()), modality="ct"), 422, "modality"),
        (analyze(api, alice, encode(scan()), modality="mri"), 422, "modality"),
        (api.post("/v1/analyses", content=b"{not json", headers={**alice, "Content-Type": "application/json"}), 422, "body"),
        (api.post("/v1/analyses", json={"image_id": image_id, "prompt": {"box": [1, 1]}}, headers=alice), 422, "box"),
        (api.post("/v1/analyses", json={"image_id": "nope"}, headers=alice), 404, "no image nope"),
        (api.post("/v1/analyses", content=b"x", headers={**alice, "Content-Type": "text/plain"}), 415, "multipart"),
        (api.post(f"/v1/images/{image_id}/segment", json={"prompt": {"box": [0, 0, 999, 9]}}, headers=alice), 422, "inside"),
        (api.get("/v1/analyses?limit=0", headers=alice), 422, "limit"),
        (api.get("/v1/analyses?cursor=abc", headers=alice), 422, "cursor"),
    ]
    for res, status, message in checks:
        assert res.status_code == status, res.text
        assert message in res.json()["error"]["message"], res.text


def _exif_rotated_jpeg() -> bytes:
    image = scan((200, 120)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "PhoneMaker"  # a camera make that must not be stored
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def _png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "Jane Doe")
    return encode(scan(), pnginfo=info)


ODD_IMAGES = {
    "16-bit png": (lambda: encode(Image.fromarray(np.asarray(scan()).astype(np.uint16) * 200)), (200, 150)),
    "palette png": (lambda: encode(scan().convert("P")), (200, 150)),
    "rgba png": (lambda: encode(scan().convert("RGBA")), (200, 150)),
    "la png": (lambda: encode(scan().convert("LA")), (200, 150)),
    "cmyk jpeg": (lambda: encode(scan().convert("CMYK"), "JPEG"), (200, 150)),
    "exif-rotated jpeg": (_exif_rotated_jpeg, (120, 200)),
    "png with text chunk": (_png_with_text, (200, 150)),
}


@pytest.mark.parametrize("case", list(ODD_IMAGES))
def test_odd_images_are_decoded_and_stored_without_metadata(api, alice, case):
    make, size = ODD_IMAGES[case]
    res = upload(api, alice, make())
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["width"], body["height"]) == size
    kept = next((api.home / "images").glob(f"*/{body['image_id']}.png")).read_bytes()
    image = Image.open(io.BytesIO(kept))
    assert image.size == size and not image.info.get("exif") and "PatientName" not in image.info
    assert b"PhoneMaker" not in kept and b"Jane Doe" not in kept
    pixels = np.asarray(image.convert("L"))
    # The lesion (dark ellipse in the middle) survived decoding: darker than the speckle around it.
    h, w = pixels.shape
    assert pixels[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5].mean() + 40 < pixels[:10].mean()
