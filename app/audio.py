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


def pcm_chunks(path: Path, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[bytes]:
    """The first audio stream, resampled, in chunks of about `chunk_seconds` (the last one shorter), on the video's
    clock: a track that starts late, or a hole where packets could not be decoded, is filled with silence, so a
    second of PCM is the same second of the video. Nothing for a file without sound. A damaged stream raises
    AudioError saying where, after the chunks it could give."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"cannot open the file: {exc}") from None
    with container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        out = Chunker(int(chunk_seconds * RATE) * 2)
        gaps = Gaps()
        bad = 0
        try:
            for frame in _frames(container, stream):
                if frame is None:  # a packet the decoder refused: skipped, as players do
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise ValueError(f"more than {MAX_BAD_PACKETS} undecodable packets")
                    continue
                yield from out.silence(gaps.saw(frame))
                for resampled in resampler.resample(frame):
                    yield from out.add(bytes(resampled.planes[0])[:resampled.samples * 2])
            for resampled in resampler.resample(None):
                yield from out.add(bytes(resampled.planes[0])[:resampled.samples * 2])
        except (av.FFmpegError, ValueError) as exc:
            yield from out.flush()
            raise AudioError(f"the audio stream is damaged ({exc})", out.seconds) from None
        yield from out.flush()
        gaps.end(stream, container)
        if gaps.lost > GAP_S or bad >= BAD_PACKETS_REPORTED:
            lost = f"{gaps.lost:.0f} s from {gaps.first:.0f} s on" if gaps.lost > GAP_S else f"{bad} packets"
            raise AudioError(f"the audio stream is damaged: {lost} could not be decoded", gaps.first)


GAP_S = 1.0  # missing sound longer than this is reported
MAX_PAD_S = 600.0  # a late start or a hole is filled with at most this much silence
MAX_BAD_PACKETS = 200  # undecodable packets skipped before the stream is taken as damaged
BAD_PACKETS_REPORTED = 25  # fewer are a real file's usual blemish (an incomplete last frame), not damage


class Chunker:
    """PCM bytes in, chunks of a fixed size out; silence is added a chunk at a time (flat memory)."""

    def __init__(self, size: int) -> None:
        self.size, self.pending, self.done = size, bytearray(), 0

    @property
    def seconds(self) -> float:
        return (self.done + len(self.pending)) / 2 / RATE

    def add(self, data: bytes) -> Iterator[bytes]:
        self.pending += data
        while len(self.pending) >= self.size:
            yield bytes(self.pending[:self.size])
            del self.pending[:self.size]
            self.done += self.size

    def silence(self, seconds: float) -> Iterator[bytes]:
        left = int(min(seconds, MAX_PAD_S) * RATE) * 2
        while left > 0:
            step = min(left, self.size)
            yield from self.add(bytes(step))
            left -= step

    def flush(self) -> Iterator[bytes]:
        if self.pending:
            self.done += len(self.pending)
            yield bytes(self.pending)
            self.pending.clear()


def _frames(container, stream):
    """The stream's frames, packet by packet; None for each packet the decoder refuses (the next one may decode:
    one incomplete frame at the end of a real AVI file must not cost its whole sound)."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            yield None


class Gaps:
    """Where the decoded sound has holes: a first frame after 0 s, frames whose time jumps past where the previous
    one ended, and a stream that ends before its own declared duration."""

    def __init__(self) -> None:
        self.next: float | None = None  # where the sound decoded so far ends
        self.lost = 0.0  # seconds missing inside the stream (a late start is not loss)
        self.first: float = 0.0

    def saw(self, frame) -> float:
        """The silence to put before this frame."""
        if frame.pts is None or frame.time_base is None or not frame.sample_rate:
            return 0.0
        at = float(frame.pts * frame.time_base)
        start = 0.0 if self.next is None else self.next
        hole = at - start
        if self.next is not None and hole > GAP_S:
            if self.lost == 0.0:
                self.first = start
            self.lost += hole
        self.next = max(start, at) + frame.samples / frame.sample_rate
        return hole if hole > 0.02 else 0.0

    def end(self, stream, container) -> None:
        """Only the stream's own duration counts: a container's is its longest stream's (a short sound track in
        a longer video is not damage). Matroska keeps a track's own duration in its DURATION tag; FFmpeg gives
        such a stream the whole file's."""
        declared = _declared_seconds(stream, container)
        if declared is None or self.next is None:
            return
        missing = declared - self.next
        if missing > GAP_S:
            if self.lost == 0.0:
                self.first = self.next
            self.lost += missing


def _declared_seconds(stream, container) -> float | None:
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    if "matroska" in container.format.name or stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)
