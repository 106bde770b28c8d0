"""A video's sound as 16 kHz mono 16-bit PCM, streamed in chunks: a three-hour file is never held in memory."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av

RATE = 16_000  # what speech models take
CHUNK_SECONDS = 30.0


class AudioError(RuntimeError):
    """The audio stream cannot be read (from the start, or from `at` seconds on)."""

    def __init__(self, message: str, at: float = 0.0) -> None:
        super().__init__(message)
        self.at = at


def has_audio(path: Path) -> bool:
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError, ValueError):
        return False


def pcm_chunks(path: Path, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[bytes]:
    """The first audio stream, resampled, in chunks of about `chunk_seconds` (the last one shorter). Nothing for a
    file without sound. A stream that breaks midway raises AudioError saying where, after the chunks before it."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"cannot open the file: {exc}") from None
    with container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunk_bytes = int(chunk_seconds * RATE) * 2
        pending = bytearray()
        done = 0
        gaps = Gaps()
        bad = 0
        try:
            for frame in _frames(container, stream):
                if frame is None:  # a packet the decoder refused: skipped, as players do
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise ValueError(f"more than {MAX_BAD_PACKETS} undecodable packets")
                    continue
                gaps.saw(frame)
                for out in resampler.resample(frame):
                    pending += bytes(out.planes[0])[:out.samples * 2]
                while len(pending) >= chunk_bytes:
                    yield bytes(pending[:chunk_bytes])
                    del pending[:chunk_bytes]
                    done += chunk_bytes
            for out in resampler.resample(None):
                pending += bytes(out.planes[0])[:out.samples * 2]
        except (av.FFmpegError, ValueError) as exc:
            if pending:
                yield bytes(pending)
            at = (done + len(pending)) / 2 / RATE
            raise AudioError(f"the audio stream is damaged ({exc})", at) from None
        if pending:
            yield bytes(pending)
        gaps.end(stream, container)
        if gaps.lost > GAP_S:  # FFmpeg drops packets it cannot decode: a damaged stream has holes, not errors
            raise AudioError(f"the audio stream is damaged: {gaps.lost:.0f} s from {gaps.first:.0f} s on could "
                             f"not be decoded", gaps.first)


GAP_S = 1.0  # missing sound longer than this is reported
MAX_BAD_PACKETS = 200  # undecodable packets skipped before the stream is taken as damaged


def _frames(container, stream):
    """The stream's frames, packet by packet; None for each packet the decoder refuses (the next one may decode:
    one incomplete frame at the end of a real AVI file must not cost its whole sound)."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            yield None


class Gaps:
    """Where the decoded sound has holes: frames whose time jumps past where the previous one ended, and a stream
    that ends before its declared duration."""

    def __init__(self) -> None:
        self.next: float | None = None  # where the sound decoded so far ends (a stream may start late)
        self.lost = 0.0
        self.first: float = 0.0

    def _hole(self, start: float, end: float) -> None:
        if end - start > GAP_S:
            if self.lost == 0.0:
                self.first = start
            self.lost += end - start

    def saw(self, frame) -> None:
        if frame.pts is None or frame.time_base is None or not frame.sample_rate:
            return
        at = float(frame.pts * frame.time_base)
        if self.next is not None:
            self._hole(self.next, at)
        self.next = max(self.next or at, at + frame.samples / frame.sample_rate)

    def end(self, stream, container) -> None:
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / 1_000_000
        else:
            return
        self._hole(self.next or 0.0, declared)
