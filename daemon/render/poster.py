"""A small JPEG of one frame of a rendered video (NAME.poster.jpg), for links.html to embed.

Made from the output file itself (PyAV decode), so it shows what the viewer gets. A frame a little into
the video rather than the very first: the first is often a fade or a blink. Written temp + rename.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
from PIL import Image

from daemon.files import write_atomic

POSTER_WIDTH = 320
POSTER_QUALITY = 70  # about 10-20 kB at 320 px: small enough to embed in the page as a data: URI
SKIP_FRAMES = 12  # about half a second at 25 fps


def make_poster(video: Path, dest: Path, *, width: int = POSTER_WIDTH) -> Path:
    """Write dest (a JPEG `width` pixels wide) from one frame of `video`; OSError/av errors go up."""
    image = _frame(video)
    height = max(2, round(image.height * width / image.width))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=POSTER_QUALITY, optimize=True)
    return write_atomic(dest, buffer.getvalue(), mode=0o644)  # the web server reads it


def _frame(video: Path) -> Image.Image:
    chosen = None
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            chosen = frame
            if index >= SKIP_FRAMES:
                break
    if chosen is None:
        raise ValueError(f"{video} has no video frame to make a poster from")
    image: Image.Image = chosen.to_image()
    return image
