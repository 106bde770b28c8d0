"""Browser-playable copies of videos that browsers cannot play (MPEG-4 Part 2, AVI, MKV, HEVC...).

A proxy is a small H.264/AAC MP4 (longest side 640, fast start) kept beside the keyframes;
the video route serves it instead of the original, with Range requests as for any file.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from app.video_decode import SCALER_THREADS, VideoError, fit_size, open_video, upright

PROXY_MAX_SIDE = 640
MS = Fraction(1, 1000)


def make_proxy(src: Path, dst: Path, rotation: int = 0, preset: str = "veryfast") -> None:
    """Write dst (atomically: a .part file renamed at the end)."""
    tmp = dst.with_name(dst.name + ".part")
    dst.parent.mkdir(parents=True, exist_ok=True)
    container, vin = open_video(src)
    ain = container.streams.audio[0] if container.streams.audio else None
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            rate = vin.average_rate or vin.guessed_rate or 25
            vout = out.add_stream("libx264", rate=rate, options={"crf": "28", "preset": preset})
            vout.pix_fmt = "yuv420p"
            vout.codec_context.time_base = MS  # frames keep their own times (variable frame rate too)
            w, h = fit_size(vin.codec_context.width, vin.codec_context.height, PROXY_MAX_SIDE)
            size = (w // 2 * 2, h // 2 * 2)
            vout.width, vout.height = size[::-1] if rotation in (90, 270) else size
            aout = None
            if ain is not None:
                aout = out.add_stream("aac", rate=48000)
                aout.layout = "stereo"
                resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
            streams = [vin] + ([ain] if ain is not None else [])
            t0, last_pts = None, -1
            for packet in container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for frame in frames:
                    if packet.stream.type == "video":
                        if rotation:
                            img = frame.reformat(width=size[0], height=size[1], format="rgb24",
                                                 threads=SCALER_THREADS).to_ndarray()
                            out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(upright(img, rotation)),
                                                                   format="rgb24")
                        else:  # straight from the decoder's YUV: no colour conversion at all
                            out_frame = frame.reformat(width=size[0], height=size[1], format="yuv420p",
                                                       threads=SCALER_THREADS)
                        t = frame.time if frame.time is not None else (last_pts + 40) / 1000
                        t0 = t if t0 is None else t0
                        last_pts = max(round((t - t0) * 1000), last_pts + 1)
                        out_frame.pts, out_frame.time_base = last_pts, MS
                        out.mux(vout.encode(out_frame))
                    elif aout is not None:
                        frame.pts = None
                        for resampled in resampler.resample(frame):
                            out.mux(aout.encode(resampled))
            out.mux(vout.encode(None))
            if aout is not None:
                out.mux(aout.encode(None))
    except (av.FFmpegError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"could not make a browser-playable copy: {exc}") from None
    finally:
        container.close()
    tmp.replace(dst)
