"""entrypoints/media.py: an image file read through a file:// URL is held to the same size limit as a data URL or a
fetched one (it was read up to the limit and handed to PIL cut short, which then reported a broken image)."""
from __future__ import annotations

import io

import PIL.Image
import pytest

from pagedllm.entrypoints import media


def test_a_local_file_over_the_size_limit_is_named(tmp_path, monkeypatch):
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    (tmp_path / "red.png").write_bytes(buf.getvalue())
    url = f"file://{tmp_path / 'red.png'}"
    assert media.load_image(url, str(tmp_path)).size == (64, 64)
    monkeypatch.setattr(media, "MAX_IMAGE_BYTES", len(buf.getvalue()) - 1)
    with pytest.raises(ValueError, match=r"image_url: the image is larger than"):
        media.load_image(url, str(tmp_path))
