"""One tqdm bar per ingest stage (decode, shots, keyframes, features, index, ...), shared by the whole run, and
optionally a listener that hears the same counts and each file's outcome (a job reporting to its page)."""
from __future__ import annotations

import sys
from typing import Protocol

from tqdm import tqdm

STAGES = ("decode", "shots", "keyframes", "features", "index", "concepts", "objects", "faces", "ocr", "speech")
UNITS = {"decode": "frame", "shots": "frame", "keyframes": "kf", "features": "vec", "index": "vec",
         "concepts": "item", "objects": "pic", "faces": "pic", "ocr": "pic", "speech": "s"}


class ProgressListener(Protocol):
    def stage(self, name: str, n: int) -> None: ...

    def file(self, path: str, status: str, reason: str = "") -> None: ...


class StageProgress:
    def __init__(self, enabled: bool | None = None, listener: ProgressListener | None = None) -> None:
        """enabled=None shows the bars only on a terminal, so logs and CI stay readable."""
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.listener = listener
        self.bars = {name: tqdm(desc=f"{name:<9}", unit=UNITS[name], position=i, disable=not enabled,
                                leave=True, dynamic_ncols=True)
                     for i, name in enumerate(STAGES)}

    def update(self, stage: str, n: int = 1) -> None:
        self.bars[stage].update(n)
        if self.listener is not None:
            self.listener.stage(stage, n)

    def file(self, path: str, status: str, reason: str = "") -> None:
        """One input file's outcome: added, updated, unchanged, skipped or failed (with the reason)."""
        if self.listener is not None:
            self.listener.file(path, status, reason)

    def total(self, stage: str) -> int:
        return int(self.bars[stage].n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
