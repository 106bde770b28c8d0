"""Label categories: each label may have a parent (COCO's supercategories by default, or a user's YAML/JSON file such
as clothing > top > shirt); a filter on a category takes in its descendants.

A hierarchy file is either a mapping child -> parent (`shirt: top`, `top: clothing`, `clothing: null` for a root),
or a nested tree (`{clothing: {top: [shirt, blouse], bottom: [skirt]}}`). Errors name the entry: a cycle (with its
path), a parent that is never defined, a label given two parents, an empty or over-long name.
"""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session

from app.models import Setting

MAX_NAME = 100
MAX_LABELS = 10_000
MAX_FILE_BYTES = 2_000_000  # 10,000 labels of 100 characters, with room
COCO_SUPERCATEGORIES = {
    "person": ["person"],
    "vehicle": ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
    "outdoor": ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"],
    "animal": ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    "accessory": ["backpack", "umbrella", "handbag", "tie", "suitcase"],
    "sports": ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
               "surfboard", "tennis racket"],
    "kitchen": ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"],
    "food": ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
    "furniture": ["chair", "couch", "potted plant", "bed", "dining table", "toilet"],
    "electronic": ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"],
    "appliance": ["microwave", "oven", "toaster", "sink", "refrigerator"],
    "indoor": ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"],
}


class HierarchyError(ValueError):
    """A hierarchy file that cannot be used; the message names the entry."""


def default_hierarchy() -> dict[str, str | None]:
    """COCO's 80 classes under their 12 supercategories ('person' is its own)."""
    parents: dict[str, str | None] = {}
    for parent, children in COCO_SUPERCATEGORIES.items():
        parents.setdefault(parent, None)
        for child in children:
            if child != parent:
                parents[child] = parent
    return parents


def _name(value: object, where: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise HierarchyError(f"{where}: a label must be text, not {type(value).__name__}")
    name = " ".join(str(value).split())
    if not name:
        raise HierarchyError(f"{where}: an empty label")
    if len(name) > MAX_NAME:
        raise HierarchyError(f"{where}: the label '{name[:40]}...' is over {MAX_NAME} characters")
    return name


def parse_hierarchy(data: object) -> dict[str, str | None]:
    """child -> parent (None for roots), checked: every parent defined, one parent per label, no cycle."""
    parents: dict[str, str | None] = {}

    def put(child: str, parent: str | None, where: str) -> None:
        if child in parents and parents[child] != parent and parent is not None:
            if parents[child] is not None:
                raise HierarchyError(f"{where}: '{child}' has two parents, '{parents[child]}' and '{parent}'")
        if parent is not None or child not in parents:
            parents[child] = parent

    def walk(node: object, parent: str | None, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                child = _name(key, where)
                put(child, parent, f"{where} > {child}")
                if value is not None:
                    walk(value, child, f"{where} > {child}")
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, (dict, list)):
                    walk(item, parent, where)
                else:
                    put(_name(item, where), parent, where)
        else:
            put(_name(node, where), parent, where)

    if not isinstance(data, dict) or not data:
        raise HierarchyError("the hierarchy must be a non-empty mapping (child: parent, or a nested tree)")
    flat = all(v is None or isinstance(v, str) for v in data.values())
    if flat:  # child: parent
        for key, value in data.items():
            child = _name(key, f"entry '{key}'")
            parents[child] = None if value is None else _name(value, f"entry '{key}'")
        unknown = sorted({p for p in parents.values() if p is not None and p not in parents})
        if unknown:
            raise HierarchyError(f"entry '{next(c for c, p in parents.items() if p == unknown[0])}': its parent "
                                 f"'{unknown[0]}' is not defined (add '{unknown[0]}: null' for a root)")
    else:
        walk(data, None, "top")
    if len(parents) > MAX_LABELS:
        raise HierarchyError(f"the hierarchy has {len(parents)} labels; the limit is {MAX_LABELS:,}")
    for start in parents:
        seen = [start]
        node = parents[start]
        while node is not None:
            if node in seen:
                raise HierarchyError(f"a cycle: {' > '.join(seen[seen.index(node):] + [node])}")
            seen.append(node)
            node = parents.get(node)
    return parents


def load_hierarchy(path: Path) -> dict[str, str | None]:
    """A YAML (.yaml/.yml) or JSON file."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise HierarchyError(f"{path}: {size:,} bytes; a hierarchy file is at most {MAX_FILE_BYTES:,} bytes")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HierarchyError(f"{path}: cannot be read ({exc})") from None
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise HierarchyError(f"{path}: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - YAML and JSON errors: the parser's own line and column
        raise HierarchyError(f"{path}: not valid {'YAML' if Path(path).suffix.lower() in ('.yaml', '.yml') else 'JSON'}"
                             f" ({str(exc).splitlines()[0][:200]})") from None
    try:
        return parse_hierarchy(data)
    except RecursionError:
        raise HierarchyError(f"{path}: nested too deeply") from None
    except HierarchyError as exc:
        raise HierarchyError(f"{path}: {exc}") from None


def store_hierarchy(session: Session, parents: dict[str, str | None]) -> None:
    session.merge(Setting(key="hierarchy", value=json.dumps(parents, sort_keys=True)))
    session.commit()


def hierarchy(session: Session) -> dict[str, str | None]:
    """The collection's hierarchy: the one given with --hierarchy, else COCO's supercategories."""
    row = session.get(Setting, "hierarchy")
    return json.loads(row.value) if row is not None else default_hierarchy()


def descendants(parents: dict[str, str | None], name: str) -> set[str]:
    """A label and every label below it (case-insensitive match of the name); just the name when unknown."""
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    wanted = next((n for n in parents if n.lower() == name.strip().lower()), name.strip())
    out, todo = set(), [wanted]
    while todo:
        node = todo.pop()
        if node not in out:
            out.add(node)
            todo.extend(children.get(node, []))
    return out


def tree(parents: dict[str, str | None], counts: dict[str, int]) -> list[dict]:
    """Nested nodes for a page: name, own count, total with descendants, children (biggest first). Labels found in
    the collection but absent from the hierarchy become roots."""
    everything = dict(parents)
    for label in counts:
        everything.setdefault(label, None)
    children: dict[str | None, list[str]] = {}
    for child, parent in everything.items():
        children.setdefault(parent, []).append(child)

    def node(name: str) -> dict:
        kids = [node(c) for c in children.get(name, [])]
        total = counts.get(name, 0) + sum(k["total"] for k in kids)
        return {"name": name, "count": counts.get(name, 0), "total": total,
                "children": sorted(kids, key=lambda k: (-k["total"], k["name"]))}

    return sorted((node(r) for r in children.get(None, [])), key=lambda k: (-k["total"], k["name"]))
