"""``module_sdk.media``: stored bytes by storage path, from blobs the runtime (or a test) holds.

``view(path)`` returns the bytes stored at *path*; ``add(path, payload)`` stores bytes and
returns the path. The blobs live in the runtime (``Runtime(media={...})``, or
``taskbed.media.add(...)`` in a test), so every SDK of the runtime sees the same ones.
"""

from __future__ import annotations

from typing import Any

from ._errors import TaskbedError


class MediaNotFoundError(TaskbedError, FileNotFoundError):
    """``media.view`` was given a path that nothing is stored at."""


def _path(path: object) -> str:
    raw = str(path or "").strip()
    if not raw:
        raise ValueError("path is required: media.view('uploads/manifest.json')")
    return raw


class Media:
    """``module_sdk.media``: ``view(path) -> bytes``, ``add(path, payload) -> str``, ``delete``."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    def view(self, path: str) -> bytes:
        """The bytes stored at *path*.

        Raises:
            ValueError: *path* is empty.
            FileNotFoundError: nothing is stored at *path* (``MediaNotFoundError``).
        """
        key = _path(path)
        blobs: dict[str, bytes] = self.sdk.host.media_blobs
        try:
            return bytes(blobs[key])
        except KeyError:
            known = ", ".join(repr(k) for k in sorted(blobs)[:10]) or "none"
            raise MediaNotFoundError(
                f"no media is stored at {key!r} (stored: {known}); give it to the runtime first: "
                f"Runtime(media={{{key!r}: b'...'}}) or, in a test, "
                f"taskbed.add_media({key!r}, b'...') "
                "(see docs/guides/testing-modules.md#media-translations-and-effects)"
            ) from None

    def add(self, path: str, payload: bytes) -> str:
        """Store *payload* at *path* and return the path.

        Raises:
            ValueError: *path* or *payload* is empty.
        """
        key = _path(path)
        data = bytes(payload or b"")
        if not data:
            raise ValueError("media payload is empty")
        self.sdk.host.media_blobs[key] = data
        return key

    def delete(self, path: str) -> None:
        """Forget what is stored at *path* (nothing happens when nothing is)."""
        self.sdk.host.media_blobs.pop(_path(path), None)
