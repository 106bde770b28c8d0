"""One tqdm bar per ingest stage (decode, shots, keyframes, features), shared by the whole run."""
from __future__ import annotations

import sys

from tqdm import tqdm

STAGES = ("decode", "shots", "keyframes", "features", "concepts", "objects", "faces")
UNITS = {"decode": "frame", "shots": "frame", "keyframes": "kf", "features": "vec", "concepts": "item",
         "objects": "pic", "faces": "pic"}


class StageProgress:
    def __init__(self, enabled: bool | None = None) -> None:
        """enabled=None shows the bars only on a terminal, so logs and CI stay readable."""
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bars = {name: tqdm(desc=f"{name:<9}", unit=UNITS[name], position=i, disable=not enabled,
                                leave=True, dynamic_ncols=True)
                     for i, name in enumerate(STAGES)}

    def update(self, stage: str, n: int = 1) -> None:
        self.bars[stage].update(n)

    def total(self, stage: str) -> int:
        return int(self.bars[stage].n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
