"""Loading a chat message's images (``image_url`` parts) as vLLM's server does: ``data:image/...;base64,...`` URLs
decoded, http(s) URLs fetched (VLLM_IMAGE_FETCH_TIMEOUT / PAGEDLLM_IMAGE_FETCH_TIMEOUT, 5 s), ``file://`` URLs read
only under ``--allowed-local-media-path``; each opened with PIL and converted to RGB (vLLM's default image mode).
Every failure is a ValueError that names the part (the server's 400)."""
from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from typing import Any

from pagedllm import envs

# An image larger than this is refused before PIL decodes it (a decompression bomb's pixels are checked by PIL).
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def load_image(source: Any, allowed_local_media_path: str = "", where: str = "image_url") -> Any:
    """A PIL RGB image from a URL string (data:, http(s):, file:) or a PIL image given as is (``image_pil``)."""
    import PIL.Image
    if isinstance(source, PIL.Image.Image):
        return source
    if not isinstance(source, str):
        raise ValueError(f"{where}: an image must be a URL string or a PIL image, got {type(source).__name__}.")
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme == "data":
        raw = _data_url_bytes(source, where)
    elif scheme in ("http", "https"):
        raw = _fetch(source, where)
    elif scheme == "file":
        raw = _local_file(source, allowed_local_media_path, where)
    else:
        raise ValueError(f"{where}: the image URL must start with data:, http://, https:// or file://, got "
                         f"{source[:40]!r}.")
    try:
        image = PIL.Image.open(io.BytesIO(raw))
        image.load()
    except Exception as e:       # PIL's UnidentifiedImageError, truncated files, bombs
        raise ValueError(f"{where}: the image could not be read ({type(e).__name__}: {str(e)[:120]}).") from None
    return image.convert("RGB") if image.mode != "RGB" else image


def _data_url_bytes(url: str, where: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.lower().startswith("data:image/") or ";base64" not in header.lower():
        raise ValueError(f"{where}: a data URL image must be 'data:image/<type>;base64,<data>', got "
                         f"{header[:40]!r}.")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ValueError(f"{where}: the image is larger than {MAX_IMAGE_BYTES >> 20} MiB.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the data URL's image is not valid base64.") from None


def _fetch(url: str, where: str) -> bytes:
    timeout = envs.image_fetch_timeout_s()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "pagedllm"}),
                                    timeout=timeout) as response:
            raw = response.read(MAX_IMAGE_BYTES + 1)
    except Exception as e:     # URLError, HTTPError, timeouts
        raise ValueError(f"{where}: the image at {url[:100]!r} could not be fetched ({type(e).__name__}: "
                         f"{str(e)[:120]}).") from None
    return _within_limit(raw, where)


def _within_limit(raw: bytes, where: str) -> bytes:
    """``raw`` (read up to MAX_IMAGE_BYTES + 1 bytes), or the error that it is too large."""
    if len(raw) > MAX_IMAGE_BYTES:
        raise ValueError(f"{where}: the image is larger than {MAX_IMAGE_BYTES >> 20} MiB.")
    return raw


def _local_file(url: str, allowed: str, where: str) -> bytes:
    if not allowed:      # vLLM's rule and wording
        raise ValueError(f"{where}: Cannot load local files without `--allowed-local-media-path`.")
    path = os.path.realpath(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    root = os.path.realpath(allowed)
    if os.path.commonpath([path, root]) != root:
        raise ValueError(f"{where}: the file must be under --allowed-local-media-path {allowed!r}.")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{where}: the file could not be read ({e.strerror}).") from None
    return _within_limit(raw, where)
