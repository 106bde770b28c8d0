"""Text queries through ONNX Runtime and the end-of-text cut (app.text_onnx), on tiny random-weight CLIPs: the
vectors must be open_clip's own (computed here with open_clip's encode_text on all 77 tokens), the rankings the
same, the cached export reused across processes and rebuilt when damaged, and a bad setting named clearly."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.encoders import ClipEncoder, register_model_configs
from app.settings import Settings, SettingsError
from app.text_onnx import REAL_QUERIES, cache_path, default_cache_dir
from tests.conftest import ROOT, TINY_CONFIG, TINY_MODEL

QUERIES = ["a dog on a beach", "", "x", "Phở bò ở Hà Nội 🍜, über café, ñandú, 東京の夜, привет",
           "a long caption " * 60,  # far past 77 tokens: cut, its end-of-text token at position 76
           "A RED CAR!!! at night... (2024) #news @anchor"]
DEEPER = {  # four layers, QuickGELU (as OpenAI's weights use), wider: more of the tower than the tiny model has
    "embed_dim": 48, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 4}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny test model and a deeper one (its config written here), both random weights, torch text."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "framefinder-text-deeper.json").write_text(json.dumps(DEEPER))
    register_model_configs(TINY_CONFIG)
    register_model_configs(folder)
    return {name: ClipEncoder(name, "none", "cpu") for name in (TINY_MODEL, "framefinder-text-deeper")}


def open_clip_vectors(encoder: ClipEncoder, texts: list[str]) -> np.ndarray:
    """The reference: open_clip's own encode_text on all 77 tokens, normalised here."""
    with torch.no_grad():
        feats = encoder.model.encode_text(encoder.tokenizer(list(texts))).numpy()
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", [TINY_MODEL, "framefinder-text-deeper"])
def test_onnx_and_the_end_of_text_cut_give_open_clips_vectors(models, name, tmp_path):
    encoder = models[name]
    tokens = encoder.tokenizer(QUERIES)
    assert int(tokens[4].argmax()) == 76 and int(tokens[1].argmax()) == 1  # the long one is cut, the empty one not
    reference = open_clip_vectors(encoder, QUERIES)
    for engine in ("torch", "onnx"):
        assert encoder.use_text_engine(engine, cache_dir=tmp_path) == engine
        one_by_one = np.concatenate([encoder.encode_text([q]) for q in QUERIES])
        batched = encoder.encode_text(QUERIES)  # padded to the longest: the causal mask keeps the padding out
        for got in (one_by_one, batched):
            assert got.dtype == np.float32 and got.shape == reference.shape
            assert np.min(np.sum(got * reference, axis=1)) > 0.9999, engine
            assert np.abs(got - reference).max() < 1e-5, engine
    encoder.use_text_engine("torch")


def test_rankings_over_a_collection_are_identical(models, tmp_path):
    encoder = models["framefinder-text-deeper"]
    rng = np.random.default_rng(7)
    collection = unit(rng.standard_normal((4000, encoder.dim)).astype(np.float32))
    expected = np.argsort(-(open_clip_vectors(encoder, list(REAL_QUERIES)) @ collection.T), axis=1)[:, :50]
    assert encoder.use_text_engine("onnx", cache_dir=tmp_path) == "onnx"
    got = np.argsort(-(encoder.encode_text(REAL_QUERIES) @ collection.T), axis=1)[:, :50]
    encoder.use_text_engine("torch")
    assert np.array_equal(got, expected)


def test_a_tower_that_is_not_causal_runs_at_full_length_on_torch(tmp_path, caplog):
    encoder = ClipEncoder(TINY_MODEL, "none", "cpu")
    encoder.model.attn_mask = torch.zeros_like(encoder.model.attn_mask)  # every token sees every other: no cut
    reference = open_clip_vectors(encoder, QUERIES)
    with caplog.at_level(logging.WARNING, "framefinder.text"):
        assert encoder.use_text_engine("onnx", cache_dir=tmp_path) == "torch-full"
    assert "attention mask is not causal" in caplog.text and not list(tmp_path.iterdir())
    assert np.abs(encoder.encode_text(QUERIES) - reference).max() < 1e-6


def test_the_export_is_kept_and_a_second_process_loads_it(models, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    encoder = models[TINY_MODEL]
    assert encoder.use_text_engine("onnx") == "onnx" and encoder.text.source == "exported"
    path = cache_path(tmp_path / "framefinder" / "text-onnx", TINY_MODEL, encoder.fingerprint)
    assert default_cache_dir() == path.parent and path.is_file()
    before = path.stat()
    assert encoder.use_text_engine("onnx") == "onnx" and encoder.text.source == "cache"  # a second load
    script = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from app.encoders import ClipEncoder, register_model_configs\n"
              f"register_model_configs({str(TINY_CONFIG)!r})\n"
              f"e = ClipEncoder({TINY_MODEL!r}, 'none', 'cpu', text_engine='auto')\n"
              f"vectors = e.encode_text({QUERIES!r}).tolist()\n"
              "print(json.dumps([e.text_engine, e.text.source, str(e.text.path), vectors]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    engine, source, used, vectors = json.loads(done.stdout.splitlines()[-1])
    assert (engine, source, used) == ("onnx", "cache", str(path))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert np.abs(np.array(vectors) - open_clip_vectors(encoder, QUERIES)).max() < 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left behind
    encoder.use_text_engine("torch")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "another model"])
def test_a_damaged_cached_file_is_built_again(models, tmp_path, damage, caplog):
    encoder, other = models[TINY_MODEL], models["framefinder-text-deeper"]
    assert other.use_text_engine("onnx", cache_dir=tmp_path) == "onnx"  # a valid file of other weights
    path = cache_path(tmp_path, TINY_MODEL, encoder.fingerprint)
    whole = cache_path(tmp_path, "framefinder-text-deeper", other.fingerprint).read_bytes()
    path.write_bytes({"garbage": b"not an onnx model \x00\xff" * 100, "truncated": whole[:len(whole) // 2],
                      "empty": b"", "another model": whole}[damage])
    with caplog.at_level(logging.WARNING, "framefinder.text"):
        assert encoder.use_text_engine("onnx", cache_dir=tmp_path) == "onnx"
    assert encoder.text.source == "exported" and "cannot be used" in caplog.text and str(path) in caplog.text
    assert path.read_bytes() != whole and path.stat().st_size > 1000
    got = encoder.encode_text(QUERIES)
    encoder.use_text_engine("torch")
    other.use_text_engine("torch")
    assert np.abs(got - open_clip_vectors(encoder, QUERIES)).max() < 1e-5


def test_without_onnxruntime_text_stays_on_torch_with_one_sentence(tmp_path, monkeypatch, caplog):
    encoder = ClipEncoder(TINY_MODEL, "none", "cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with caplog.at_level(logging.INFO, "framefinder.text"):
        assert encoder.use_text_engine("auto", cache_dir=tmp_path) == "torch"
    said = [r for r in caplog.records if r.name == "framefinder.text"]
    assert len(said) == 1 and "onnxruntime" in said[0].getMessage() and "torch" in said[0].getMessage()
    assert np.abs(encoder.encode_text(QUERIES) - open_clip_vectors(encoder, QUERIES)).max() < 1e-5


def _top10(queries: np.ndarray, collection: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ collection.T), axis=1)[:, :10]


def _int8_vectors(path, encoder: ClipEncoder) -> np.ndarray:
    """The int8 file run directly by onnxruntime, the tokens cut here at their end-of-text token."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = []
    for q in REAL_QUERIES:
        tokens = encoder.tokenizer([q]).numpy()
        rows.append(session.run(None, {"tokens": tokens[:, :int(tokens.argmax()) + 1]})[0][0])
    return unit(np.array(rows))


def test_int8_is_kept_only_where_its_top10_agrees_with_fp32(models, tmp_path, caplog):
    encoder = models["framefinder-text-deeper"]
    fp32 = open_clip_vectors(encoder, list(REAL_QUERIES)).astype(np.float32)
    rng = np.random.default_rng(3)
    scattered = unit(rng.standard_normal((3000, encoder.dim)).astype(np.float32))
    # each query's ten nearest far ahead of everything else: any faithful encoder keeps the same top-10 set
    near = unit(np.repeat(fp32, 10, axis=0) + 0.05 * rng.standard_normal((10 * len(fp32), encoder.dim)))
    separated = np.concatenate([near, unit(rng.standard_normal((3000, encoder.dim)).astype(np.float32))])
    verdicts = {}
    for label, collection in (("scattered", scattered), ("separated", separated)):
        caplog.clear()
        with caplog.at_level(logging.INFO, "framefinder.text"):
            engine = encoder.use_text_engine("onnx-int8", lambda q, k, c=collection: _top10(q, c)[:, :k],
                                             cache_dir=tmp_path)
        int8 = _int8_vectors(cache_path(tmp_path, "framefinder-text-deeper", encoder.fingerprint, int8=True), encoder)
        a, b = _top10(fp32, collection), _top10(int8, collection)
        expected = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)])
        assert encoder.int8_overlap == pytest.approx(expected, abs=0.011)
        verdicts[label] = engine, encoder.int8_overlap
        if engine == "onnx":
            assert f"onnx-int8 refused: its top-10 agrees with fp32 on {encoder.int8_overlap:.3f}" in caplog.text
    encoder.use_text_engine("torch")
    assert verdicts["separated"] == ("onnx-int8", 1.0)
    engine, overlap = verdicts["scattered"]
    assert engine == ("onnx-int8" if overlap >= 0.99 else "onnx")


def test_int8_without_an_index_to_check_against_stays_fp32(models, tmp_path, caplog):
    encoder = models[TINY_MODEL]
    with caplog.at_level(logging.WARNING, "framefinder.text"):
        assert encoder.use_text_engine("onnx-int8", cache_dir=tmp_path) == "onnx"
    encoder.use_text_engine("torch")
    assert "needs the collection's index" in caplog.text


def test_a_bad_text_engine_is_named_clearly(tmp_path):
    import server

    for flags, environ, where, bad in (({"text_engine": "fast"}, {}, "the command line", "fast"),
                                       ({}, {"FRAMEFINDER_TEXT_ENGINE": "onnx-int4"}, "FRAMEFINDER_TEXT_ENGINE",
                                        "onnx-int4")):
        with pytest.raises(SettingsError) as caught:
            Settings.load({"data_dir": tmp_path, **flags}, environ)
        assert str(caught.value) == f"text_engine from {where} must be one of auto, torch, onnx, onnx-int8, not {bad!r}"
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text("TEXT_ENGINE = 'gpu'\n")
    with pytest.raises(SettingsError, match=r"text_engine from .*config\.py must be one of auto, torch"):
        Settings.load({"data_dir": tmp_path}, {})
    assert Settings.load({"data_dir": tmp_path, "text_engine": " ONNX "}, {}).text_engine == "onnx"
    assert Settings.load({"data_dir": tmp_path / "elsewhere"}, {}).text_engine == "auto"
    args = server.build_parser().parse_args(["--data-dir", str(tmp_path), "--text-engine", "turbo"])  # as main()
    with pytest.raises(SettingsError, match="text_engine from the command line must be one of .*, not 'turbo'"):
        Settings.load(vars(args), {})
    with pytest.raises(ValueError, match="text_engine must be one of auto, torch, onnx, onnx-int8, not 'cuda'"):
        ClipEncoder(TINY_MODEL, "none", "cpu", text_engine="cuda")


def test_the_server_and_the_terminal_use_the_setting(tmp_path, monkeypatch):
    """server.py's searcher and `offline.py search` get their encoders with the text engine the settings name."""
    from app import create_app
    from app.sample import make_image
    from app.services import searcher
    from app.terminal_search import TerminalQuery, run
    from tests.conftest import db_url, index_media

    for i in range(3):
        make_image(tmp_path / "media" / f"still_{i}.jpg", i)
    data = tmp_path / "data"
    sessions = index_media(data, db_url(data), tmp_path / "media", ClipEncoder(TINY_MODEL, "none", "cpu"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    exported = tmp_path / "cache" / "framefinder" / "text-onnx"
    monkeypatch.setenv("FRAMEFINDER_TEXT_ENGINE", "torch")
    app = create_app({"DATA_DIR": str(data), "TESTING": True})
    with app.app_context():
        assert searcher().encoder.text_engine == "torch" and not exported.exists()
    monkeypatch.delenv("FRAMEFINDER_TEXT_ENGINE")  # the default, auto: ONNX on the CPU
    app = create_app({"DATA_DIR": str(data), "TESTING": True})
    with app.app_context():
        assert searcher().encoder.text_engine == "onnx" and len(list(exported.iterdir())) == 1
        served = [r["item"] for r in app.test_client().get("/api/search?q=a+dog&k=3").get_json()["results"]]
    mine = [h.entry.item for h in run(Settings.load({"data_dir": data}), TerminalQuery(text="a dog", k=3),
                                      sessions)[0].hits]
    assert mine == served  # the terminal's one query runs on torch (auto), and ranks as the server does
    settings = Settings.load({"data_dir": data, "text_engine": "onnx-int8"})
    run(settings, TerminalQuery(text="a dog", k=3), sessions)
    assert len(list(exported.iterdir())) == 2  # asked for by name: the int8 file was made (and checked)
