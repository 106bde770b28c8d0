"""Ground-truth loaders: Oxford/Paris text files, Revisited pickles, labelled folders, video moments.

Each loader returns one `GroundTruth` whose queries say, per protocol, which item names
are positive and which are junk. Item names are what the benchmark files use: image
names without extension (Oxford, Revisited), paths below the root without extension
(labelled folders); video moments are resolved against the catalogue when scoring.
A malformed file raises GroundTruthError naming the file and line.
"""
from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from app.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from app.numbers import finite

FORMATS = ("oxford", "revisited", "labelled", "moments", "annotations", "ucf101")
ANNOTATIONS_SET = "@annotations"  # the boxes saved on the annotation page, as ground truth
MOMENT_COLUMNS = ("query_id", "query", "video_id", "start_frame", "end_frame")
# Rows of the summary table per format; the first is the headline (`--protocol` picks another).
PROTOCOLS = {
    "oxford": ("standard", "good", "ok", "junk"),
    "revisited": ("medium", "easy", "hard"),
    "labelled": ("standard",),
    "moments": ("standard",),
    "annotations": ("standard",),
    "ucf101": ("video",),
}
PROTOCOL_HELP = {
    "standard": "positives good + ok, junk ignored",
    "good": "positives good only; ok and junk ignored",
    "ok": "positives ok only; good and junk ignored",
    "junk": "how much junk is retrieved: junk counted as if relevant",
    "easy": "positives easy; junk + hard ignored",
    "medium": "positives easy + hard; junk ignored",
    "hard": "positives hard; junk + easy ignored",
    "video": "each clip (the mean of its keyframe vectors) queries every other clip; relevant: its class's clips",
}


class GroundTruthError(ValueError):
    """A ground-truth set that cannot be used; the message names the file and line."""


@dataclass
class Moment:
    video_id: str
    start_frame: int
    end_frame: int


@dataclass
class GtQuery:
    qid: str
    where: str  # file:line that defines the query, for messages
    image: str | None = None  # query image name (Oxford, Revisited, labelled)
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in the query image's pixels
    text: str | None = None  # text query (moments)
    sets: dict[str, frozenset[str]] = field(default_factory=dict)  # good/ok/junk, easy/hard/junk
    moments: list[Moment] = field(default_factory=list)
    exclude_self: bool = False  # labelled folders: the query image is not part of its own ranking

    def judged(self, protocol: str) -> tuple[frozenset[str], frozenset[str]]:
        """(positives, junk) item names under a protocol."""
        s = self.sets
        empty: frozenset[str] = frozenset()
        g, o, j = s.get("good", empty), s.get("ok", empty), s.get("junk", empty)
        e, h = s.get("easy", empty), s.get("hard", empty)
        table = {
            "standard": (g | o, j), "good": (g, o | j), "ok": (o, g | j), "junk": (j, empty),
            "easy": (e, j | h), "medium": (e | h, j), "hard": (h, j | e),
        }
        if protocol not in table:
            raise GroundTruthError(f"unknown protocol '{protocol}'")
        return table[protocol]


@dataclass
class GroundTruth:
    name: str
    format: str
    source: str
    queries: list[GtQuery]
    where: dict[str, str] = field(default_factory=dict)  # item name -> file:line that mentions it first
    root: Path | None = None  # labelled folders: names are paths below it
    # Revisited: the imlist. revisitop ranks exactly these images (its query images, qimlist, are not among
    # them), so the ranking leaves every other collection item out, the indexed query images too. None: all.
    database: frozenset[str] | None = None

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOLS[self.format]

    def referenced_names(self) -> set[str]:
        """Every item name the set judges or ranks (query images not included: they may live elsewhere)."""
        names = {n for q in self.queries for s in q.sets.values() for n in s}
        return names | (self.database or set())


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".pkl":
            return "revisited"
        if path.suffix.lower() == ".csv":
            return "moments"
        raise GroundTruthError(f"{path}: not a ground-truth file (expected .pkl, .csv, or a folder)")
    if path.is_dir():
        if any(path.glob("*_query.txt")):
            return "oxford"
        if is_ucf101_layout(path):
            return "ucf101"
        if any(p.is_dir() for p in path.iterdir()):
            return "labelled"
        raise GroundTruthError(f"{path}: no *_query.txt files and no label subfolders")
    raise GroundTruthError(f"{path}: no such file or folder")


def load(path: Path, fmt: str | None = None, allow_pickle: bool = True) -> GroundTruth:
    """Load any supported format. Pickles only from paths the operator named (allow_pickle)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "revisited":
        if not allow_pickle:
            raise GroundTruthError(f"{path.name}: pickles are loaded only from the command line or the "
                                   f"server's ground-truth folder, never from an upload")
        gt = load_revisited(path)
    elif fmt == "oxford":
        gt = load_oxford(path)
    elif fmt == "labelled":
        gt = load_labelled(path)
    elif fmt == "ucf101":
        gt = load_ucf101(path)
    elif fmt == "moments":
        gt = load_moments(path.read_bytes(), path.name)
        gt.source = str(path)
    else:
        raise GroundTruthError(f"unknown ground-truth format '{fmt}' (one of {', '.join(FORMATS)})")
    if not gt.queries:
        raise GroundTruthError(f"{path}: the ground-truth set has no queries")
    return gt


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise GroundTruthError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_oxford(folder: Path) -> GroundTruth:
    """<q>_query.txt holds '<image> x1 y1 x2 y2'; <q>_good/ok/junk.txt one image name per line."""
    queries, where = [], {}
    for qfile in sorted(folder.glob("*_query.txt")):
        qid = qfile.name[: -len("_query.txt")]
        lines = [ln for ln in _read_lines(qfile) if ln.strip()]
        if len(lines) != 1:
            raise GroundTruthError(f"{qfile.name}: expected one line '<image> x1 y1 x2 y2', found {len(lines)}")
        parts = lines[0].split()
        if len(parts) != 5:
            raise GroundTruthError(f"{qfile.name}:1: expected '<image> x1 y1 x2 y2', got {len(parts)} fields")
        try:
            x1, y1, x2, y2 = (finite(v, "each box number", 0, 1e6) for v in parts[1:])
        except ValueError as exc:
            raise GroundTruthError(f"{qfile.name}:1: the box must be four finite numbers ({exc})") from None
        if x2 <= x1 or y2 <= y1:
            raise GroundTruthError(f"{qfile.name}:1: the box {x1} {y1} {x2} {y2} has no area")
        sets = _oxford_lists(folder, qid, where)
        queries.append(GtQuery(qid, f"{qfile.name}:1", image=parts[0], box=(x1, y1, x2, y2), sets=sets))
        where.setdefault(parts[0], f"{qfile.name}:1")
    return GroundTruth(folder.name, "oxford", str(folder), queries, where)


def _oxford_lists(folder: Path, qid: str, where: dict[str, str]) -> dict[str, frozenset[str]]:
    """<qid>_good/ok/junk.txt. A name in two of them is an error: the protocols need one label per name
    (taking it as positive would silently differ from compute_ap, which reads the lists as given)."""
    first: dict[str, tuple[str, str]] = {}  # name -> (label, file:line) for this query
    sets = {}
    for label in ("good", "ok", "junk"):
        lfile = folder / f"{qid}_{label}.txt"
        if not lfile.is_file():
            raise GroundTruthError(f"{lfile.name}: missing (every query needs _good, _ok and _junk files)")
        names = []
        for lineno, line in enumerate(_read_lines(lfile), start=1):
            name = line.strip()
            if not name:
                continue
            if len(name.split()) != 1:
                raise GroundTruthError(f"{lfile.name}:{lineno}: expected one image name, got '{name[:80]}'")
            spot = f"{lfile.name}:{lineno}"
            other = first.setdefault(name, (label, spot))
            if other[0] != label:
                raise GroundTruthError(f"{other[1]} and {spot}: '{name}' is listed as both {other[0]} and {label} "
                                       f"for query {qid}; a name belongs to one list")
            names.append(name)
            where.setdefault(name, spot)
        sets[label] = frozenset(names)
    return sets


class _GroundTruthUnpickler(pickle.Unpickler):
    """Plain containers and numpy arrays only: a ground-truth pickle never runs code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_revisited(path: Path) -> GroundTruth:
    """gnd_roxford5k.pkl / gnd_rparis6k.pkl: imlist, qimlist, gnd[i] = {bbx, easy, hard, junk} (indices).
    The imlist is the database that is ranked (see GroundTruth.database)."""
    try:
        with open(path, "rb") as fh:
            cfg = _GroundTruthUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise GroundTruthError(f"{path.name}: not a Revisited ground-truth pickle ({exc})") from None
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise GroundTruthError(f"{path.name}: expected a dict with imlist, qimlist and gnd")
    imlist, qimlist, gnd = [str(n) for n in cfg["imlist"]], list(cfg["qimlist"]), list(cfg["gnd"])
    if len(gnd) != len(qimlist):
        raise GroundTruthError(f"{path.name}: {len(qimlist)} query images but {len(gnd)} gnd entries")
    where: dict[str, str] = {}
    for i, name in enumerate(imlist):
        if name in where:
            raise GroundTruthError(f"{path.name}: {where[name]} and imlist[{i}] are both '{name}'; the database "
                                   f"names each image once")
        where[name] = f"{path.name}: imlist[{i}]"
    queries = []
    for i, (qname, g) in enumerate(zip(qimlist, gnd, strict=True)):
        spot = f"{path.name}: gnd[{i}]"
        bbx, sets = _revisited_entry(g, imlist, spot)
        queries.append(GtQuery(str(qname), spot, image=str(qname), box=bbx, sets=sets))
        where.setdefault(str(qname), f"{path.name}: qimlist[{i}]")
    return GroundTruth(path.stem, "revisited", str(path), queries, where, database=frozenset(imlist))


def _revisited_entry(g, imlist: list[str], spot: str) -> tuple[tuple[float, float, float, float],
                                                                 dict[str, frozenset[str]]]:
    """One gnd entry: a finite box with an area, and easy/hard/junk names that do not overlap."""
    try:
        bbx = tuple(finite(v, "each bbx number", -1e6, 1e6) for v in g["bbx"])
        indices = {key: [int(j) for j in g.get(key, [])] for key in ("easy", "hard", "junk")}
    except KeyError as exc:
        raise GroundTruthError(f"{spot}: malformed entry (no {exc})") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise GroundTruthError(f"{spot}: malformed entry ({exc})") from None
    if len(bbx) != 4:
        raise GroundTruthError(f"{spot}: bbx must have four numbers")
    if bbx[2] <= bbx[0] or bbx[3] <= bbx[1]:
        raise GroundTruthError(f"{spot}: the bbx {list(bbx)} has no area")
    label_of: dict[int, str] = {}
    for key, idx in indices.items():
        for j in idx:
            if not 0 <= j < len(imlist):
                raise GroundTruthError(f"{spot}: an image index lies outside imlist ({len(imlist)} images)")
            if label_of.setdefault(j, key) != key:
                raise GroundTruthError(f"{spot}: imlist[{j}] '{imlist[j]}' is listed as both {label_of[j]} and "
                                       f"{key}; a name belongs to one list")
    sets = {key: frozenset(imlist[j] for j in idx) for key, idx in indices.items()}
    return bbx, sets  # type: ignore[return-value]


def from_annotations(boxes: list[tuple[int, str, tuple[int, int, int, int], str]]) -> GroundTruth:
    """Saved boxes as ground truth: each box queries with its region; the other frames or images
    that carry a box of the same label are relevant; its own frame is left out of its ranking.

    boxes: (annotation id, target name '<video_id>/<n>' or image path, (x, y, w, h), label).
    """
    targets_of: dict[str, set[str]] = {}
    for _, target, _, label in boxes:
        targets_of.setdefault(label, set()).add(target)
    queries = []
    for ann_id, target, (x, y, w, h), label in boxes:
        where = f"annotation {ann_id} ({label})"
        queries.append(GtQuery(f"box{ann_id}-{label}", where, image=target, box=(x, y, x + w, y + h),
                               sets={"good": frozenset(targets_of[label] - {target})}, exclude_self=True))
    where_of = {t: f"a box labelled '{label}'" for _, t, _, label in boxes}
    return GroundTruth("annotations", "annotations", "the annotation database", queries, where_of)


def labelled_name(root: Path, image: Path) -> str:
    return image.relative_to(root).with_suffix("").as_posix()


def load_labelled(root: Path) -> GroundTruth:
    """<label>/<image>: each image queries the others of its label (itself excluded)."""
    by_label: dict[str, list[str]] = {}
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in label_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        by_label[label_dir.name] = [labelled_name(root, p) for p in images]
    queries = []
    where = {}
    for names in by_label.values():
        for name in names:
            where[name] = f"{root.name}/{name}"
            others = frozenset(n for n in names if n != name)
            queries.append(GtQuery(name, where[name], image=name, sets={"good": others}, exclude_self=True))
    return GroundTruth(root.name, "labelled", str(root), queries, where, root=root.resolve())


def load_moments(data: bytes, filename: str) -> GroundTruth:
    """CSV query_id,query,video_id,start_frame,end_frame; several rows per query give several ranges."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GroundTruthError(f"{filename}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise GroundTruthError(f"{filename}: empty file")
    header = [h.strip() for h in header]
    missing = [c for c in MOMENT_COLUMNS if c not in header]
    if missing:
        raise GroundTruthError(f"{filename}:1: missing column(s) {', '.join(missing)} "
                               f"(expected {','.join(MOMENT_COLUMNS)})")
    col = {c: header.index(c) for c in MOMENT_COLUMNS}
    queries: dict[str, GtQuery] = {}
    try:
        rows = list(enumerate(reader, start=2))
    except csv.Error as exc:
        raise GroundTruthError(f"{filename}:{reader.line_num}: not readable CSV ({exc})") from None
    for lineno, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise GroundTruthError(f"{filename}:{lineno}: expected {len(header)} columns, found {len(row)}")
        qid, query, video = (row[col[c]].strip() for c in ("query_id", "query", "video_id"))
        if not qid or not query or not video:
            raise GroundTruthError(f"{filename}:{lineno}: query_id, query and video_id must not be empty")
        try:
            start, end = int(row[col["start_frame"]]), int(row[col["end_frame"]])
        except ValueError:
            raise GroundTruthError(f"{filename}:{lineno}: start_frame and end_frame must be whole numbers") from None
        if start < 0 or end < start:
            raise GroundTruthError(f"{filename}:{lineno}: the frame range {start}-{end} is empty or negative")
        q = queries.setdefault(qid, GtQuery(qid, f"{filename}:{lineno}", text=query))
        if q.text != query:
            raise GroundTruthError(f"{filename}:{lineno}: query {qid} has another text than on {q.where}")
        q.moments.append(Moment(video, start, end))
    return GroundTruth(Path(filename).stem, "moments", filename, list(queries.values()))


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


def is_ucf101_layout(path: Path) -> bool:
    """A labelled video folder as UCF101 ships it (`<Class>/<clip>.avi`): subfolders, every one of them holding
    video files, and no Oxford *.txt lists beside them."""
    if not path.is_dir() or any(path.glob("*.txt")):
        return False
    classes = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(classes) and all(_videos_in(c) for c in classes)


def load_ucf101(root: Path) -> GroundTruth:
    """<Class>/<clip>.<video>: each clip queries the other clips (relevant: its class's); its class name is the
    zero-shot label. Item names are '<Class>/<clip stem>'; `root` lets the evaluation find the clips' files."""
    if not is_ucf101_layout(root):
        raise GroundTruthError(f"{root}: not a UCF101-layout folder (<Class>/<clip>.avi: every subfolder holds "
                               f"video files)")
    by_class: dict[str, list[str]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        by_class[class_dir.name] = [f"{class_dir.name}/{v.name}" for v in _videos_in(class_dir)]
    queries, where = [], {}
    for names in by_class.values():
        for name in names:
            where[name] = f"{root.name}/{name}"
            queries.append(GtQuery(name, where[name], sets={"good": frozenset(n for n in names if n != name)},
                                   exclude_self=True))
    return GroundTruth(root.name, "ucf101", str(root), queries, where, root=root.resolve())
