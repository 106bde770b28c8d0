"""Object filters: "frames with at least N of class X" (`objects=person>=2,car>=1`), several conditions combined.

A class may be a category: `animal>=1` counts every detected label below 'animal' in the hierarchy. Counted are the
detector's boxes that no annotator rejected. The matching items become an ID selector inside the FAISS search, like
the other filters, so a filtered query still gets K results.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.categories import descendants, hierarchy
from app.items import ItemRef
from app.models import Detection, Image, Keyframe, Video

MAX_CONDITIONS = 10
MAX_COUNT = 1000
CONDITION = re.compile(r"^\s*([^<>=]+?)\s*(?:(>=|=>|>|=)\s*(\S*))?\s*$")


class ObjectFilterError(ValueError):
    """A filter that cannot be read; the message names the part."""


@dataclass(frozen=True)
class Condition:
    name: str  # a label or a category, as written
    labels: frozenset[str]  # the detected labels it counts
    at_least: int

    def __str__(self) -> str:
        return f"{self.name}>={self.at_least}"


def known_labels(session: Session) -> set[str]:
    return set(session.scalars(select(Detection.label).distinct())) | set(hierarchy(session))


def parse_conditions(raw: str, session: Session) -> tuple[Condition, ...]:
    """'person>=2,car>=1' ('car' alone means car>=1; 'car>1' means car>=2). Unknown classes and bad counts are
    errors that name the part."""
    parts = [p for p in (raw or "").split(",") if p.strip()]
    if not parts:
        return ()
    if len(parts) > MAX_CONDITIONS:
        raise ObjectFilterError(f"objects: at most {MAX_CONDITIONS} conditions, not {len(parts)}")
    parents = hierarchy(session)
    known = known_labels(session)
    lower = {k.lower(): k for k in known}
    out = []
    for part in parts:
        match = CONDITION.match(part)
        if match is None:
            what = "the class name is missing" if part.strip()[:1] in "<>=" else "only NAME>=COUNT, NAME>COUNT or NAME"
            raise ObjectFilterError(f"objects: '{part.strip()[:60]}' is not NAME>=COUNT ({what})")
        name, op, count = match.group(1), match.group(2), match.group(3) or ""
        if op is not None and not count:
            raise ObjectFilterError(f"objects: '{part.strip()[:60]}' has no count after {op}")
        if len(name) > 100:
            raise ObjectFilterError("objects: a class name is at most 100 characters")
        if name.lower() not in lower:
            close = sorted(k for k in known if k.lower().startswith(name.lower()[:2]))[:8]
            raise ObjectFilterError(f"objects: unknown class '{name[:60]}'" +
                                    (f" (known ones like it: {', '.join(close)})" if close else
                                     " (see the Categories page for the classes)"))
        try:
            if count and not count.isascii():
                raise ValueError(count)  # int() would read other scripts' digits
            n = int(count) if count else 1
        except ValueError:
            raise ObjectFilterError(f"objects: '{count[:20]}' in '{part.strip()[:60]}' is not a whole number") from None
        n = n + 1 if op == ">" else n
        if not 1 <= n <= MAX_COUNT:
            raise ObjectFilterError(f"objects: the count in '{part.strip()[:60]}' must be between 1 and {MAX_COUNT}")
        label = lower[name.lower()]
        out.append(Condition(label, frozenset(descendants(parents, label)), n))
    return tuple(out)


def matching_refs(session: Session, conditions: tuple[Condition, ...]) -> set[ItemRef]:
    """Items (keyframes, images) meeting every condition."""
    result: set[ItemRef] | None = None
    for cond in conditions:
        live = (Detection.label.in_(cond.labels)) & (Detection.status != "rejected")
        frames = session.execute(
            select(Video.video_id, Keyframe.frame_idx).join(Keyframe, Keyframe.video_pk == Video.id)
            .join(Detection, Detection.keyframe_id == Keyframe.id).where(live)
            .group_by(Keyframe.id, Video.video_id, Keyframe.frame_idx)
            .having(func.count(Detection.id) >= cond.at_least))
        images = session.execute(
            select(Image.content_hash).join(Detection, Detection.image_id == Image.id).where(live)
            .group_by(Image.id, Image.content_hash).having(func.count(Detection.id) >= cond.at_least))
        refs = {ItemRef.frame(v, f) for v, f in frames} | {ItemRef.image(h) for (h,) in images}
        result = refs if result is None else result & refs
        if not result:
            return set()
    return result or set()
