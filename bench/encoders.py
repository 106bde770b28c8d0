#!/usr/bin/env python3
"""CLIP encoder speed per precision: image throughput and single text-query latency, and whether
the faster precision ranks like fp32 (top-10 overlap of text queries over encoded images).

On CUDA 'auto' (fp16 weights, what Framefinder uses there) is compared with fp32; on the CPU,
where Framefinder uses fp32, bf16 autocast (CPUs with AVX512-BF16/AMX) is compared with it.
Prints a table and, last, one JSON line.

    python bench/encoders.py                  # CPU
    python bench/encoders.py --device cuda --batch 256
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.sample import make_image  # noqa: E402
from app.shots import cpu_has_bf16  # noqa: E402

PHRASES = ["a dog on a beach", "a red car at night", "people walking in the rain", "a news anchor in a studio",
           "a burning house", "a football match", "a man speaking at a podium", "a boat on a river",
           "a crowded market", "an aerial view of a city"]


def measure(encoder: ClipEncoder, images: list, texts: list[str], batch: int) -> dict:
    encoder.batch_size = batch
    encoder.encode_images(images[:batch])  # warm-up
    encoder.encode_text(texts[:1])
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    feats = encoder.encode_images(images)
    image_s = time.perf_counter() - t0
    latencies, text_feats = [], []
    for t in texts:
        t0 = time.perf_counter()
        text_feats.append(encoder.encode_text([t]))
        latencies.append((time.perf_counter() - t0) * 1000)
    return {"images_per_s": round(len(images) / image_s, 1),
            "text_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "text_p95_ms": round(float(np.percentile(latencies, 95)), 2),
            "_images": feats, "_texts": np.concatenate(text_feats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--texts", type=int, default=100)
    args = p.parse_args()
    register_model_configs(args.model_config)
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for i in range(args.images):
            make_image(Path(tmp) / f"{i}.jpg", i, (640, 360))
            images.append(Image.open(Path(tmp) / f"{i}.jpg").convert("RGB"))
    texts = [f"{PHRASES[i % len(PHRASES)]}, take {i}" for i in range(args.texts)]
    torch.manual_seed(0)
    base = ClipEncoder(args.model, args.pretrained, args.device, precision="fp32")
    rows = {"fp32": measure(base, images, texts, args.batch)}
    if base.device.startswith("cuda"):  # fp16 weights: a second model, same seed
        torch.manual_seed(0)
        rows["auto"] = measure(ClipEncoder(args.model, args.pretrained, args.device, precision="auto"), images,
                               texts, args.batch)
    elif cpu_has_bf16():  # the same weights under bf16 autocast (opt-in on the CPU)
        base.precision = "bf16"
        rows["bf16"] = measure(base, images, texts, args.batch)
    ref = rows["fp32"]
    for row in rows.values():
        top_ref = np.argsort(-(ref["_texts"] @ ref["_images"].T), axis=1)[:, :10]
        top = np.argsort(-(row["_texts"] @ row["_images"].T), axis=1)[:, :10]
        row["top10_overlap_vs_fp32"] = round(float(np.mean([len(set(a) & set(b)) / 10
                                                             for a, b in zip(top, top_ref, strict=True)])), 4)
    results = [{"precision": name, **{k: v for k, v in row.items() if not k.startswith("_")}}
               for name, row in rows.items()]
    device = (torch.cuda.get_device_name(0) if base.device.startswith("cuda")
              else f"cpu ({torch.get_num_threads()} threads, native bf16: {cpu_has_bf16()})")
    for r in results:
        print(f"{r['precision']:>5}: images {r['images_per_s']:>8.1f}/s (batch {args.batch})  text p50 "
              f"{r['text_p50_ms']:.1f} ms p95 {r['text_p95_ms']:.1f} ms  top-10 overlap {r['top10_overlap_vs_fp32']}")
    print(json.dumps({"bench": "encoders", "model": args.model, "device": device, "batch": args.batch,
                      "results": results}))


if __name__ == "__main__":
    main()
