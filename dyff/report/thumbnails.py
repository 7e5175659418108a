"""Thumbnails of dataset images as PNG `data:` URIs, for a page that loads nothing."""

from __future__ import annotations

import base64
import io
import logging

log = logging.getLogger("dyff.report")

THUMB_PX = 96


def thumbnail_data_uri(data: bytes | None, size: int = THUMB_PX) -> tuple[str, int, int] | None:
    """A PNG data URI of the image scaled to fit `size` pixels, and its width and height.

    Small images are enlarged by a whole factor with nearest-neighbour sampling
    (an 8x8 digit stays crisp pixels, not a blur); larger ones are shrunk with a
    Lanczos filter. None when the bytes do not decode.
    """
    if not data:
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(opened)
            im.load()
    except Exception as exc:  # any decoder error: show a placeholder instead
        log.warning("image does not decode: %s", exc)
        return None
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
    longest = max(im.size)
    if longest < size:
        factor = max(1, size // longest)
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    else:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, im.width, im.height
