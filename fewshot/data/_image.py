"""Image decoding with errors that name the file; a corrupt image never becomes a black tensor."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images ("I;16*", "I": 16-bit PNGs, TIFFs) as 8-bit grey, values
    scaled from 0..65535 (PIL's plain convert clips them at 255: an all-white image)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    return img


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Open and fully decode ``path`` as a PIL image in ``mode``.

    Raises DataError naming ``path`` when the file is missing, truncated, not an image, or
    larger than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)    # a phone photo upright, as its viewer shows it
            return _to_8bit(img).convert(mode)
    except FileNotFoundError:
        raise DataError(f"image {path!r} does not exist") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path!r} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path!r} could not be decoded as an image ({e}); "
                        f"expected a readable JPEG/PNG file") from None
