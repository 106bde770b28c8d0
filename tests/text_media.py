"""Test media with known words: captions rendered into video frames and pictures (different fonts and sizes, one
Vietnamese line with its diacritics), and speech synthesised by espeak-ng, muxed in (PyAV) at known seconds.

A small noise floor (about -60 dB) is mixed under the speech, as any recording has: the synthesiser's exact
digital silence is what no microphone gives.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = Path("/usr/share/fonts/truetype")
RATE = 16_000
FPS = 10
SIZE = (640, 360)


@dataclass(frozen=True)
class Caption:
    text: str
    font: str
    size: int
    background: tuple[int, int, int]


@dataclass(frozen=True)
class Speech:
    at: float  # seconds into the video
    text: str


SHOT_SECONDS = 6.0
CAPTIONS = (
    Caption("EMERGENCY EXIT", "dejavu/DejaVuSans-Bold.ttf", 44, (150, 30, 30)),
    Caption("Hà Nội hôm nay", "dejavu/DejaVuSerif.ttf", 40, (30, 90, 40)),
    Caption("Breaking news: storm warning", "liberation/LiberationSans-Regular.ttf", 30, (25, 40, 110)),
    Caption("FINAL SCORE 3 1", "liberation/LiberationMono-Bold.ttf", 36, (90, 70, 20)),
)
SPEECH = (
    Speech(1.0, "good morning everyone"),
    Speech(7.5, "the president will speak tomorrow morning"),
    Speech(19.5, "thanks for watching the evening news"),
)
# pictures (not video): a word set in several fonts and sizes, each on a plain background
PICTURES = (
    Caption("WELCOME TO THE MUSEUM", "dejavu/DejaVuSerif-Bold.ttf", 48, (240, 240, 230)),
    Caption("Platform 9 departures", "liberation/LiberationSansNarrow-Regular.ttf", 34, (20, 20, 20)),
    Caption("Đà Nẵng tin tức", "dejavu/DejaVuSans.ttf", 42, (60, 60, 140)),
    Caption("open daily until midnight", "liberation/LiberationSerif-Italic.ttf", 30, (200, 180, 120)),
)


def have_tools() -> bool:
    return bool(shutil.which("espeak-ng") and (FONTS / "dejavu").is_dir() and (FONTS / "liberation").is_dir())


def render(caption: Caption, size: tuple[int, int] = SIZE, stripe: int = 0) -> Image.Image:
    """The caption centred on its background, with a few shapes so shots differ in more than colour."""
    image = Image.new("RGB", size, caption.background)
    draw = ImageDraw.Draw(image)
    for i in range(4):
        x = (stripe * 97 + i * 150) % size[0]
        draw.rectangle([x, size[1] - 60, x + 60, size[1] - 20], fill=tuple(255 - c for c in caption.background))
    font = ImageFont.truetype(str(FONTS / caption.font), caption.size)
    left, top, right, bottom = draw.textbbox((0, 0), caption.text, font=font)
    xy = ((size[0] - (right - left)) // 2, (size[1] - (bottom - top)) // 3)
    light = sum(caption.background) < 380
    draw.text(xy, caption.text, font=font, fill=(250, 250, 250) if light else (10, 10, 10))
    return image


def speech_track(speech: tuple[Speech, ...], seconds: float, work: Path) -> np.ndarray:
    """16 kHz int16 mono: each phrase spoken by espeak-ng (US English, 160 words a minute) at its second."""
    total = np.zeros(int(seconds * RATE), np.float32)
    for i, part in enumerate(speech):
        wav = work / f"say{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(wav), part.text], check=True)
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            pcm = b"".join(bytes(o.planes[0])[:o.samples * 2] for f in container.decode(audio=0)
                           for o in resampler.resample(f))
        samples = np.frombuffer(pcm, np.int16).astype(np.float32)
        at = int(part.at * RATE)
        total[at:at + len(samples)] += samples[:len(total) - at]
    total += np.random.default_rng(7).normal(0.0, 30.0, len(total))
    return np.clip(total, -32768, 32767).astype(np.int16)


def caption_video(path: Path, captions: tuple[Caption, ...] = CAPTIONS, speech: tuple[Speech, ...] = SPEECH,
                  shot_seconds: float = SHOT_SECONDS, audio_start: float = 0.0, audio_seconds: float | None = None,
                  ) -> Path:
    """One shot per caption (a hard cut between them), H.264 with the speech as AAC, muxed by PyAV. The sound
    track may start late (`audio_start`: a phrase at `at` in it is heard at audio_start + at in the video) and be
    shorter or longer than the pictures (`audio_seconds`)."""
    work = path.parent / f".{path.stem}-work"
    work.mkdir(parents=True, exist_ok=True)
    seconds = shot_seconds * len(captions)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        audio = container.add_stream("aac", rate=RATE, layout="mono") if speech else None
        for i, caption in enumerate(captions):
            still = np.asarray(render(caption, stripe=i))
            for _ in range(int(shot_seconds * FPS)):
                container.mux(video.encode(av.VideoFrame.from_ndarray(still, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            encode_audio(container, audio, speech_track(speech, audio_seconds or seconds, work), audio_start)
    shutil.rmtree(work)
    return path


def encode_audio(container, stream, samples: np.ndarray, start: float = 0.0) -> None:
    """16 kHz int16 mono samples into an open audio stream, a second at a time, the first at `start` seconds."""
    for at in range(0, len(samples), RATE):
        frame = av.AudioFrame.from_ndarray(samples[at:at + RATE].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, at + int(start * RATE)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def sine_audio(path: Path, seconds: int) -> Path:
    """A tone of `seconds` as AAC in an .m4a: long sound, cheap to make."""
    tone = (np.sin(np.arange(RATE) * 2 * np.pi * 300 / RATE) * 8000).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono", bit_rate=16000)
        for second in range(seconds):
            frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, second * RATE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def caption_pictures(folder: Path, captions: tuple[Caption, ...] = PICTURES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, caption in enumerate(captions):
        path = folder / f"sign{i}.jpg"
        render(caption, (800, 450), stripe=i).save(path, quality=92)
        paths.append(path)
    return paths


def damage_audio(src: Path, dst: Path, after_s: float = 8.0) -> Path:
    """A copy (Matroska) whose audio packets after `after_s` seconds are random bytes; the video packets are
    untouched, so only the sound is damaged."""
    rng = np.random.default_rng(3)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="matroska") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (inp.streams.video[0], inp.streams.audio[0])}
        for packet in inp.demux():
            index = packet.stream.index
            if index not in streams or packet.dts is None:
                continue
            if packet.stream.type == "audio" and packet.pts is not None and \
                    float(packet.pts * packet.time_base) > after_s:
                garbage = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                packet = garbage
            packet.stream = streams[index]
            out.mux(packet)
    return dst
