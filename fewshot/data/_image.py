"""Image decoding with errors that name the file; a corrupt image never becomes a black tensor."""
from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Open and fully decode ``path`` as a PIL image in ``mode``.

    Raises DataError naming ``path`` when the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode: truncated files fail here, not later
            return img.convert(mode)
    except FileNotFoundError:
        raise DataError(f"image {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path!r} could not be decoded as an image ({e}); "
                        f"expected a readable JPEG/PNG file") from None
