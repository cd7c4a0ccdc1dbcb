"""Safe decoding of uploaded block images: size limit, decompression-bomb guard, JPEG/PNG/WebP only."""

from __future__ import annotations

import io
import logging
import warnings
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageTypeError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


def read_limited(stream: BinaryIO, *, max_bytes: int, name: str) -> bytes:
    """Read at most ``max_bytes`` from ``stream``; larger uploads are refused without reading them whole."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: larger than {max_bytes} bytes")
    if not data:
        raise InvalidImageError(f"{name}: empty file")
    return data


def decode_image(data: bytes, *, max_pixels: int, name: str) -> Image.Image:
    """Decode ``data`` to an upright RGB image, or raise a 4xx domain error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{name}: {width}x{height} exceeds {max_pixels} pixels")
            image.load()
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (ImageTooLargeError, InvalidImageError):
        raise
    except UnidentifiedImageError as error:
        raise UnsupportedImageTypeError(f"{name}: not a JPEG, PNG or WebP image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name}: image is too large to decode safely") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"{name}: cannot decode image ({error})") from error
    except Exception as error:
        # Decoders of hostile bytes fail in many ways (struct.error, IndexError, ...): all mean a bad image.
        logger.info("%s: decoder failed with %s: %s", name, type(error).__name__, error)
        raise InvalidImageError(f"{name}: cannot decode image") from error
    return upright
