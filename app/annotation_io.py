"""Annotation export and import: COCO JSON, CSV, and AI Challenge style per-keyframe object JSON.

An import is all or nothing: every record is validated like a box saved on the page,
and the first bad one (named by its position) rejects the whole file.
"""
from __future__ import annotations

import csv
import io
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import boxes
from app.boxes import AnnotationError
from app.items import ItemRef
from app.models import Annotation, Image, Keyframe, User, Video
from app.numbers import finite
from app.paths import DataLayout

CSV_COLUMNS = ("item", "x", "y", "w", "h", "label", "note", "author")
MAX_IMPORT = 10_000  # one import holds the database's write lock: about 8 s at this size on SQLite
MAX_SIDE = 1_000_000  # pixels: far beyond any picture, far below any overflow
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def _formula_like(cell: str) -> bool:
    """Starts with a formula character, possibly behind quotes that an earlier escape added."""
    return cell.lstrip("'").startswith(FORMULA_START)


def formula_safe(cell: object) -> object:
    """A text cell a spreadsheet shows as text: a leading quote before a formula start (OWASP's rule); a cell
    that already starts with quotes before one gets one more, so that unquoting gives it back exactly."""
    if isinstance(cell, str) and _formula_like(cell):
        return "'" + cell
    return cell


def formula_unquote(cell: str) -> str:
    """The inverse, so that an exported CSV imports back to the same labels and notes."""
    return cell[1:] if cell.startswith("'") and _formula_like(cell[1:]) else cell


def to_coco(session: Session, layout: DataLayout, rows: list[Annotation]) -> dict:
    """COCO JSON. `bbox` is in the pixels of the file named (a keyframe may be smaller than its video);
    `source_bbox` and each image's `item` keep the exact box for an import back."""
    images: dict[str, tuple[dict, boxes.Target]] = {}
    categories: dict[str, int] = {}
    out, skipped = [], []
    for a in rows:
        if a.target not in images:
            try:
                t = boxes.target_of(session, layout, a)
            except AnnotationError as exc:  # orphaned: listed, not fatal to the export
                skipped.append({"id": a.id, "item": a.target, "reason": str(exc)})
                continue
            images[a.target] = ({"id": len(images) + 1, "file_name": t.file_name, "item": a.target,
                                 "width": t.picture_size[0], "height": t.picture_size[1],
                                 "source_width": t.width, "source_height": t.height}, t)
        image, t = images[a.target]
        left, top, right, bottom = t.on_picture((a.x, a.y, a.w, a.h))
        cat = categories.setdefault(a.label.name, len(categories) + 1)
        out.append({"id": a.id, "image_id": image["id"], "category_id": cat,
                    "bbox": [left, top, right - left, bottom - top], "area": (right - left) * (bottom - top),
                    "source_bbox": [a.x, a.y, a.w, a.h], "iscrowd": 0, "note": a.note, "author": a.author.name})
    return {"info": {"description": "Framefinder annotations"}, "images": [i for i, _ in images.values()],
            "categories": [{"id": i, "name": n} for n, i in categories.items()], "annotations": out,
            "skipped": skipped}


def to_csv(rows: list[Annotation]) -> str:
    """One box per line, in the item's source pixels."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for a in rows:
        writer.writerow([formula_safe(v) for v in (a.target, a.x, a.y, a.w, a.h, a.label.name, a.note, a.author.name)])
    return buf.getvalue()


def to_aic(session: Session, layout: DataLayout, rows: list[Annotation]) -> dict:
    """Per frame ('<video_id>@<frame_idx>'), the AI Challenge object-file fields: class names, scores, and
    boxes as [ymin, xmin, ymax, xmax] normalised to the frame. Images and orphaned boxes are left out."""
    out: dict[str, dict] = {}
    for a in rows:
        if a.video_id is None:
            continue
        try:
            t = boxes.target_of(session, layout, a)
        except AnnotationError:
            continue
        entry = out.setdefault(a.target, {"detection_class_names": [], "detection_scores": [], "detection_boxes": []})
        entry["detection_class_names"].append(a.label.name)
        entry["detection_scores"].append(1.0)
        entry["detection_boxes"].append([round(a.y / t.height, 6), round(a.x / t.width, 6),
                                         round((a.y + a.h) / t.height, 6), round((a.x + a.w) / t.width, 6)])
    return out


def _payload(item, box, label, note) -> dict:
    return {"item": item, "box": box, "label": label, "note": note}


def _coco_box(ann: dict, image: dict) -> list:
    """The exact source box when the file has one (our own export), else bbox scaled from the file's pixels."""
    if "source_bbox" in ann:
        return ann["source_bbox"]
    bbox, sw, sh = ann["bbox"], image.get("source_width"), image.get("source_height")
    if sw is None and sh is None or not isinstance(bbox, list) or len(bbox) != 4:
        return bbox
    return _to_source(bbox, (sw, sh), (image.get("width"), image.get("height")), f"image {image.get('id')!r}")


def _to_source(bbox, source: tuple, picture: tuple, where: str) -> list[float]:
    """A bbox in a picture's pixels scaled to the item's source pixels; sizes and numbers must be finite."""
    try:
        sw, sh, pw, ph = (finite(v, "each size", 1, MAX_SIDE) for v in (*source, *picture))
    except (ValueError, TypeError) as exc:
        raise AnnotationError(f"{where}: width, height, source_width and source_height must be positive sizes "
                              f"({exc})") from None
    try:
        return [finite(v, "each bbox number", -MAX_SIDE, MAX_SIDE) * f
                for v, f in zip(bbox, (sw / pw, sh / ph, sw / pw, sh / ph), strict=True)]
    except (ValueError, TypeError) as exc:
        raise AnnotationError(f"{where}: bbox {str(bbox)[:80]} must be four finite numbers ({exc})") from None


def records_from_coco(data: bytes) -> list[dict]:
    try:
        doc = json.loads(data.decode("utf-8"))
        images = {img["id"]: img for img in doc["images"]}
        cats = {c["id"]: c["name"] for c in doc["categories"]}
        items = doc["annotations"]
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise AnnotationError(f"not a JSON file ({str(exc)[:200]})") from None
    except RecursionError:
        raise AnnotationError("the JSON is nested too deeply") from None
    except (KeyError, TypeError) as exc:
        raise AnnotationError(f"not a COCO file: missing {exc} (needs images, categories, annotations)") from None
    if not isinstance(items, list) or not isinstance(doc["images"], list):
        raise AnnotationError("not a COCO file: images and annotations must be lists")
    out = []
    for i, ann in enumerate(items):
        try:
            image = images[ann["image_id"]]
            record = _payload(image.get("item"), _coco_box(ann, image), cats[ann["category_id"]], ann.get("note", ""))
            if "item" not in image:  # a plain COCO file: the item is found from file_name, bbox is in its pixels
                record.update(item=None, file_name=image.get("file_name"),
                              picture_size=(image.get("width"), image.get("height")))
            out.append(record)
        except (KeyError, TypeError) as exc:
            raise AnnotationError(f"annotations[{i}]: missing or unknown {exc}") from None
    return out


def records_from_csv(data: bytes) -> list[dict]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"not UTF-8 text ({exc.reason})") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        if "target" in (reader.fieldnames or []) and "item" not in (reader.fieldnames or []):
            raise AnnotationError("line 1: this CSV names keyframes by number in keyframe pixels (the form before "
                                  "boxes were anchored on frames); export it again from this version, whose "
                                  "'item' column names '<video_id>@<frame_idx>' in source pixels")
        missing = [c for c in CSV_COLUMNS[:6] if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"line 1: missing column(s) {', '.join(missing)}")
        return [_payload(formula_unquote(r["item"] or ""), [r["x"], r["y"], r["w"], r["h"]],
                         formula_unquote(r["label"] or ""), formula_unquote(r.get("note") or "")) for r in reader]
    except csv.Error as exc:  # a field over the csv module's 128 KB limit, a NUL byte, ...
        raise AnnotationError(f"line {reader.line_num}: not readable CSV ({exc})") from None


def _from_file_name(session: Session, layout: DataLayout, payload: dict) -> dict:
    """A plain COCO record: the item whose file is `file_name` (a keyframe below the data dir, or an image by its
    name below the indexed folder), its bbox turned from that file's pixels into the item's source pixels."""
    name = payload["file_name"]
    if not isinstance(name, str) or not name:
        raise AnnotationError("the image has neither an 'item' nor a 'file_name'")
    frame = session.execute(select(Video.video_id, Keyframe.frame_idx).join(Video)
                            .where(Keyframe.image_path == name)).first()
    image_hash = None if frame else session.scalar(select(Image.content_hash).where(Image.name == name).limit(1))
    if frame is None and image_hash is None:
        raise AnnotationError(f"'{name[:200]}' is no keyframe or image of this collection (COCO file_name is relative "
                              f"to the collection: keyframes/<video>/<nnn>.jpg, or an image below its indexed folder)")
    ref = ItemRef.frame(*frame) if frame else ItemRef.image(image_hash)
    target = boxes.resolve_ref(session, layout, ref)
    box = _to_source(payload["box"], (target.width, target.height), payload["picture_size"], f"'{name[:200]}'")
    return {"item": str(ref), "box": box, "label": payload["label"], "note": payload["note"]}


def import_records(session: Session, layout: DataLayout, user: User, records: list[dict], where: str) -> int:
    """Store every record or none; the importer becomes the author."""
    if len(records) > MAX_IMPORT:
        raise AnnotationError(f"{len(records)} records; one import takes at most {MAX_IMPORT}")
    try:
        for i, payload in enumerate(records):
            try:
                if payload.get("item") is None and "file_name" in payload:
                    payload = _from_file_name(session, layout, payload)
                boxes.create(session, layout, user, payload, commit=False)
            except AnnotationError as exc:
                raise AnnotationError(f"{where} {i + 1}: {exc}") from None
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(records)
