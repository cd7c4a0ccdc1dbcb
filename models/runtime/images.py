"""The one image loader: uploaded blocks, training data and evaluation data are all decoded here.

Loading means: refuse more than ``max_bytes`` and more than ``max_pixels`` (decompression-bomb guard), accept
JPEG, PNG and WebP only, apply the EXIF orientation (cameras store portrait shots rotated), convert to RGB.
Offline figures and live fingerprints therefore see the same pixels for the same file.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})
"""File name endings of the allowed formats (dataset readers list images by them)."""

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""24 MP photos pass, small files declaring huge images do not."""


class ImageRejectedError(ValueError):
    """An image cannot be used; the message names it and says why."""


class ImageTooLargeError(ImageRejectedError):
    """More bytes or pixels than allowed."""


class UnsupportedImageFormatError(ImageRejectedError):
    """Not a JPEG, PNG or WebP image."""


class UndecodableImageError(ImageRejectedError):
    """Empty, truncated or otherwise broken image data."""


def read_limited(stream: BinaryIO, *, max_bytes: int, name: str) -> bytes:
    """Read at most ``max_bytes`` from ``stream``; larger inputs are refused without reading them whole."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: larger than {max_bytes} bytes")
    if not data:
        raise UndecodableImageError(f"{name}: empty file")
    return data


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, name: str) -> Image.Image:
    """Decode ``data`` to an upright RGB image, or raise an :class:`ImageRejectedError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{name}: {width}x{height} exceeds {max_pixels} pixels")
            image.load()
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except ImageRejectedError:
        raise
    except UnidentifiedImageError as error:
        raise UnsupportedImageFormatError(f"{name}: not a JPEG, PNG or WebP image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name}: image is too large to decode safely") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UndecodableImageError(f"{name}: cannot decode image ({error})") from error
    except Exception as error:
        # Decoders of hostile bytes fail in many ways (struct.error, IndexError, ...): all mean a bad image.
        logger.info("%s: decoder failed with %s: %s", name, type(error).__name__, error)
        raise UndecodableImageError(f"{name}: cannot decode image") from error
    return upright


def load_image_file(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """An image file decoded exactly as the service decodes an upload of the same bytes."""
    with Path(path).open("rb") as handle:
        data = read_limited(handle, max_bytes=max_bytes, name=str(path))
    return decode_image(data, max_pixels=max_pixels, name=str(path))
