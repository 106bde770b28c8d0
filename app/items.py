"""How every page, API answer, box and export names a collection item: one `ItemRef` type.

An item is named by what survives a re-index: a video frame by `(video_id, frame_idx)` (a keyframe's
number `n` is renumbered whenever keyframes are chosen again) and a still image by its content hash
(its path changes when the collection moves). Text forms, also used in URLs:

    <video_id>@<frame_idx>     a frame of a video, e.g. L01_V001@1234
    image:<content_hash>       a catalogued image, e.g. image:3f2a...
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from app.numbers import MAX_ID

_VIDEO_ID = re.compile(r"[A-Za-z0-9_.-]{1,255}")  # what app.media.safe_id makes
_HASH = re.compile(r"[0-9a-f]{16,64}")
_FRAME = re.compile(r"0|[1-9][0-9]{0,11}")  # one spelling per frame: no leading zeros


class BadItemRef(ValueError):
    """Text that names no item: the message says which forms are accepted."""


@dataclass(frozen=True, order=True)
class ItemRef:
    """A video frame (video_id and frame_idx set) or a catalogued image (image_hash set)."""

    video_id: str | None = None
    frame_idx: int | None = None
    image_hash: str | None = None

    @classmethod
    def frame(cls, video_id: str, frame_idx: int) -> ItemRef:
        return cls(video_id=video_id, frame_idx=int(frame_idx))

    @classmethod
    def image(cls, content_hash: str) -> ItemRef:
        return cls(image_hash=content_hash)

    @property
    def is_frame(self) -> bool:
        return self.video_id is not None

    @classmethod
    def parse(cls, text: object) -> ItemRef:
        """The item a text names, in its one spelling (no spaces, no leading zeros); BadItemRef (a ValueError)
        for anything else."""
        if not isinstance(text, str):
            raise BadItemRef("an item is named by text: '<video_id>@<frame_idx>' or 'image:<content_hash>'")
        if text.startswith("image:"):
            digest = text[6:].lower()
            if _HASH.fullmatch(digest):
                return cls.image(digest)
            raise BadItemRef(f"'{text[:80]}' is not 'image:<content_hash>' (the hex hash an item's page shows)")
        video_id, at, frame = text.rpartition("@")
        if at and _VIDEO_ID.fullmatch(video_id) and _FRAME.fullmatch(frame) and int(frame) <= MAX_ID:
            return cls.frame(video_id, int(frame))
        raise BadItemRef(f"'{text[:80]}' names no item: a video frame is '<video_id>@<frame_idx>' (e.g. "
                         f"L01_V001@1234), an image 'image:<content_hash>'")

    def __str__(self) -> str:
        return f"{self.video_id}@{self.frame_idx}" if self.is_frame else f"image:{self.image_hash}"
