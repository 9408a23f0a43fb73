"""The one guarded way to open an image from untrusted bytes (uploads and drawn-mask prompts).

The size comes from the file's own header (PNG IHDR, JPEG SOF), read by hand before Pillow sees the
bytes: a decompression bomb is refused from its first few dozen bytes, before any decoding (Pillow
itself refuses to even open a file over twice its own limit, with no size to report). Only then is the
image opened and decoded. Every refusal is an `ImageRejected` with a code and a message of ours:
Pillow's own texts (which carry object addresses and internals) never reach a client.
"""
from __future__ import annotations

import io
import struct
import warnings

from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (every SOFn but DHT C4, JPG C8 and DAC CC) carry height and width.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}


class ImageRejected(ValueError):
    """`code`: unsupported_media_type, too_many_pixels, wrong_size or corrupt_image."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def sniff(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        i += 2 + length
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) as the header declares it, without decoding; None when the header is unreadable."""
    return _png_size(data) if fmt == "png" else _jpeg_size(data)


def open_checked(data: bytes, max_pixels: int, what: str = "image", formats: tuple[str, ...] = ("png", "jpeg"),
                 size: tuple[int, int] | None = None) -> tuple[Image.Image, str]:
    """The decoded (loaded) image and its format, once its header said it is at most `max_pixels`
    (and exactly `size` = (width, height) when given). `what` names it in messages."""
    fmt = sniff(data)
    if fmt not in formats:
        names = " or ".join(f.upper() for f in formats)
        raise ImageRejected("unsupported_media_type", f"the {what} is not a {names} image (checked by its content)")
    declared = header_size(data, fmt)
    if declared is None:
        raise ImageRejected("corrupt_image", f"the {what}'s {fmt.upper()} data cannot be decoded (truncated or corrupt): "
                                             "its header gives no size")
    width, height = declared
    if size is not None and declared != tuple(size):
        raise ImageRejected("wrong_size", f"the {what} is {width}x{height}, the image is {size[0]}x{size[1]}")
    if width * height > max_pixels or width == 0 or height == 0:
        raise ImageRejected("too_many_pixels" if width * height else "corrupt_image",
                            f"the {what} is {width}x{height} = {width * height} pixels, the limit is {max_pixels}")
    try:
        with warnings.catch_warnings():
            # Our limit was checked from the header; Pillow's own bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.size != declared:  # a second header that disagrees with the first: refuse, do not guess
                raise ImageRejected("corrupt_image", f"the {what}'s {fmt.upper()} headers disagree about its size")
            image.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_many_pixels", f"the {what} has too many pixels, the limit is {max_pixels}") from err
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as err:
        # Pillow's ways of saying corrupt or truncated; its message is not ours to pass on.
        raise ImageRejected("corrupt_image",
                            f"the {what}'s {fmt.upper()} data cannot be decoded (truncated or corrupt)") from err
    return image, fmt
