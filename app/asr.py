"""Speech to timestamped text: utterances with their words' times, from a stream of 16 kHz PCM chunks.

Two models behind one interface:
- PocketSphinx (the default): its US English acoustic model, dictionary and language model ship inside the
  `pocketsphinx` wheel, so it runs with no network. Its voice activity detector cuts the stream into utterances,
  each decoded on its own: memory stays flat however long the file.
- Whisper through faster-whisper, with `--asr-model PATH` (a CTranslate2 Whisper folder): far better, any
  language. The package is not installed by default (`pip install faster-whisper`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.audio import RATE

DEFAULT_ASR_MODEL = "pocketsphinx"
MAX_UTTERANCE_S = 20.0  # continuous speech is cut here, so one utterance never holds much audio
WHISPER_WINDOW_S = 600.0  # faster-whisper is given this much audio at a time (float32: 38 MB)
_VARIANT = re.compile(r"\(\d+\)$")  # pocketsphinx names pronunciation variants "that(2)"


class AsrUnavailable(RuntimeError):
    """The speech model named cannot be used here; the message names the flag to use."""


@dataclass
class Segment:
    start: float  # seconds from the start of the file
    end: float
    text: str
    confidence: float  # 0..1
    words: list[tuple[str, float, float]] = field(default_factory=list)  # word, start, end


class SphinxModel:
    """PocketSphinx's shipped US English model; `dither` keeps a track's digital silence from misleading its
    noise estimate (synthetic and edited audio has stretches of exact zeros), with a fixed seed so the same sound
    always gives the same words."""

    def __init__(self, language: str) -> None:
        if not language.lower().startswith("en"):
            raise AsrUnavailable(f"the built-in speech model knows English only, not '{language}'; give a Whisper "
                                 f"model with --asr-model PATH, or use --no-asr")
        from pocketsphinx import Decoder, Endpointer

        self.name = "pocketsphinx-en-us"
        self._decoder = Decoder(loglevel="ERROR", dither=True, seed=1)
        self._endpointer_type = Endpointer

    def transcribe(self, chunks: Iterable[bytes]) -> Iterator[Segment]:
        vad = self._endpointer_type()
        size = vad.frame_bytes
        speech: list[bytes] = []
        start = 0.0
        pending = b""
        for chunk in chunks:
            pending += chunk
            usable = len(pending) - len(pending) % size
            for at in range(0, usable, size):
                frame = vad.process(pending[at:at + size])
                if frame is not None:
                    if not speech:
                        start = vad.speech_start
                    speech.append(frame)
                if speech and (not vad.in_speech or len(speech) * vad.frame_length >= MAX_UTTERANCE_S):
                    yield from self._decode(start, b"".join(speech))
                    speech = []
            pending = pending[usable:]
        tail = vad.end_stream(pending) if pending else None
        if tail is not None:
            if not speech:
                start = vad.speech_start
            speech.append(tail)
        if speech:
            yield from self._decode(start, b"".join(speech))

    def _decode(self, start: float, pcm: bytes) -> Iterator[Segment]:
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None:
            return
        frame_s = 1 / d.config["frate"]
        words = [(_VARIANT.sub("", s.word), start + s.start_frame * frame_s, start + (s.end_frame + 1) * frame_s)
                 for s in d.seg() if not s.word.startswith(("<", "[")) and s.word != "<sil>"]
        if not words:
            return
        probs = [s.prob for s in d.seg() if not s.word.startswith(("<", "["))]
        confidence = float(np.clip(np.mean(probs), 0.0, 1.0)) if probs else 0.0
        yield Segment(words[0][1], words[-1][2], " ".join(w for w, _, _ in words), confidence, words)


class WhisperModel:
    """faster-whisper over windows of WHISPER_WINDOW_S seconds, with word timestamps and its own VAD."""

    def __init__(self, path: str, language: str) -> None:
        try:
            from faster_whisper import WhisperModel as FasterWhisper
        except ImportError:
            raise AsrUnavailable("--asr-model needs the faster-whisper package (pip install faster-whisper); "
                                 "without it use the built-in English model (leave out --asr-model)") from None
        if not Path(path).is_dir():
            raise AsrUnavailable(f"--asr-model {path}: not a folder (a CTranslate2 Whisper model, e.g. "
                                 f"faster-whisper-small downloaded beforehand)")
        try:
            self._model = FasterWhisper(path, device="auto", compute_type="default")
        except Exception as exc:  # CTranslate2 refuses a folder that is not a model
            raise AsrUnavailable(f"--asr-model {path} does not load: {exc}") from None
        self.language = None if language in ("", "auto") else language
        self.name = f"whisper-{Path(path).name}"[:64]

    def transcribe(self, chunks: Iterable[bytes]) -> Iterator[Segment]:
        window = bytearray()
        offset = 0.0
        for chunk in chunks:
            window += chunk
            if len(window) >= WHISPER_WINDOW_S * RATE * 2:
                yield from self._window(bytes(window), offset)
                offset += len(window) / 2 / RATE
                window.clear()
        if window:
            yield from self._window(bytes(window), offset)

    def _window(self, pcm: bytes, offset: float) -> Iterator[Segment]:
        audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
        segments, _ = self._model.transcribe(audio, language=self.language, word_timestamps=True, vad_filter=True)
        for s in segments:
            words = [(w.word.strip(), offset + w.start, offset + w.end) for w in (s.words or []) if w.word.strip()]
            confidence = math.exp(s.avg_logprob) if math.isfinite(s.avg_logprob) else 0.0
            yield Segment(offset + s.start, offset + s.end, s.text.strip(), min(1.0, confidence), words)


def load_speech_model(spec: str | None, language: str = "en") -> SphinxModel | WhisperModel:
    if not spec or spec == DEFAULT_ASR_MODEL:
        return SphinxModel(language)
    return WhisperModel(spec, language)
