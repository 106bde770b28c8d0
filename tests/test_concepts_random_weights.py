"""Action and concept labels per shot and image, with the tiny random-weight CLIP: offline.py indexes in its own
process, the test recomputes every stored label from the feature files and the encoder's text vectors.

Random weights: the labels mean nothing; what is checked is that the pass computes, stores, re-labels and filters
exactly as specified.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.conftest import db_url, index_args
from tests.processes import cli

DATA = Path(__file__).resolve().parent.parent / "app" / "data"
FAST = ["--no-faces", "--no-detector"]


def _labels(name: str) -> list[str]:
    return [ln.strip() for ln in (DATA / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def expected_prompts() -> tuple[list[str], list[str]]:
    """The default vocabulary as the issue states it, built here without app.concepts."""
    actions, objects = _labels("ucf101_actions.txt"), _labels("coco_classes.txt")
    prompts = [f"a video of a person {' '.join(w.lower() for w in re.findall(r'[A-Z][a-z]*', a))}" for a in actions]
    prompts += [f"a photo of {'an' if o[0] in 'aeiou' else 'a'} {o}" for o in objects]
    return actions + objects, prompts


def softmax100(vectors: np.ndarray, text: np.ndarray) -> np.ndarray:
    z = 100.0 * vectors.astype(np.float64) @ text.astype(np.float64).T
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def session_of(data: Path) -> Session:
    return Session(create_engine(db_url(data)))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, media_dir):
    data = tmp_path_factory.mktemp("concepts")
    done = cli("index", str(media_dir), *index_args(data), *FAST)
    assert done.returncode == 0, done.stderr
    assert "concepts: " in done.stdout and "labelled with default-v1 (181 labels)" in done.stdout, done.stdout
    return data


def stored(data: Path) -> dict:
    """{('shot', id) or ('image', id): [(rank, label, score, vocabulary)]} from the catalogue."""
    from app.models import ConceptLabel

    with session_of(data) as s:
        rows = s.execute(select(ConceptLabel.shot_id, ConceptLabel.image_id, ConceptLabel.rank, ConceptLabel.label,
                                ConceptLabel.score, ConceptLabel.vocabulary)).all()
    out: dict = {}
    for shot_id, image_id, rank, label, score, vocab in rows:
        key = ("shot", shot_id) if shot_id is not None else ("image", image_id)
        out.setdefault(key, []).append((rank, label, score, vocab))
    return {k: sorted(v) for k, v in out.items()}


def expected(data: Path, tiny_encoder, labels: list[str], prompts: list[str]) -> dict:
    """Every shot's and image's label probabilities, recomputed from the feature files."""
    from app.models import Image, Keyframe, Shot, Video

    text = tiny_encoder.encode_text(prompts)
    out = {}
    with session_of(data) as s:
        for video in s.scalars(select(Video)):
            features = np.load(data / "feature" / f"{video.video_id}.npy")
            for shot in s.scalars(select(Shot).where(Shot.video_pk == video.id)):
                ns = s.scalars(select(Keyframe.n).where(Keyframe.shot_id == shot.id)).all()
                if ns:
                    out[("shot", shot.id)] = softmax100(features[[n - 1 for n in ns]], text).mean(axis=0)
        for image in s.scalars(select(Image)):
            vec = np.load(data / "feature" / "images" / f"{image.content_hash}.npy").reshape(1, -1)
            out[("image", image.id)] = softmax100(vec, text)[0]
    return {k: dict(zip(labels, p, strict=True)) for k, p in out.items()}


def check_against(data: Path, tiny_encoder, labels: list[str], prompts: list[str], vocabulary: str) -> dict:
    got, want = stored(data), expected(data, tiny_encoder, labels, prompts)
    assert set(got) == set(want) and any(k[0] == "shot" for k in got) and any(k[0] == "image" for k in got)
    for key, probs in want.items():
        rows = got[key]
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5], key
        best = sorted(probs.values(), reverse=True)[:5]
        for (rank, label, score, vocab), top in zip(rows, best, strict=True):
            assert vocab == vocabulary
            assert score == pytest.approx(probs[label], abs=1e-6), (key, rank, label)
            assert score == pytest.approx(top, abs=1e-6), (key, rank)  # the rank-th best probability
    return got


def test_labels_per_shot_and_image_match_an_independent_computation_random_weights(labelled, tiny_encoder):
    from app.models import Image, Video

    labels, prompts = expected_prompts()
    assert len(labels) == 181 and "PlayingGuitar" in labels and "dog" in labels
    assert prompts[labels.index("PlayingGuitar")] == "a video of a person playing guitar"
    assert prompts[labels.index("dog")] == "a photo of a dog"
    check_against(labelled, tiny_encoder, labels, prompts, "default-v1")
    with session_of(labelled) as s:
        assert set(s.scalars(select(Video.concepts_vocab))) == {"default-v1"}
        assert set(s.scalars(select(Image.concepts_vocab))) == {"default-v1"}


def test_indexing_again_labels_nothing_new_random_weights(labelled, media_dir):
    from app.models import ConceptLabel

    with session_of(labelled) as s:
        before = s.execute(select(func.count(ConceptLabel.id), func.max(ConceptLabel.id))).one()
    done = cli("index", str(media_dir), *index_args(labelled), *FAST)
    assert done.returncode == 0, done.stderr
    assert "concepts: nothing new to label (default-v1)" in done.stdout, done.stdout
    with session_of(labelled) as s:
        assert s.execute(select(func.count(ConceptLabel.id), func.max(ConceptLabel.id))).one() == before


def test_label_filter_returns_only_frames_whose_shot_has_the_label_in_its_top_three_random_weights(
        labelled, tiny_encoder):
    from app import create_app
    from app.models import ConceptLabel, Image, Keyframe, Video

    with session_of(labelled) as s:
        total = s.scalar(select(func.count(Keyframe.id))) + s.scalar(select(func.count(Image.id)))
        for label in s.scalars(select(ConceptLabel.label).where(ConceptLabel.rank <= 3).group_by(ConceptLabel.label)
                               .order_by(func.count().desc(), ConceptLabel.label)):
            frames = {f"{v}@{f}" for v, f in s.execute(
                select(Video.video_id, Keyframe.frame_idx).join(Keyframe, Keyframe.video_pk == Video.id)
                .join(ConceptLabel, ConceptLabel.shot_id == Keyframe.shot_id)
                .where(ConceptLabel.label == label, ConceptLabel.rank <= 3))}
            images = {f"image:{h}" for h in s.scalars(
                select(Image.content_hash).join(ConceptLabel, ConceptLabel.image_id == Image.id)
                .where(ConceptLabel.label == label, ConceptLabel.rank <= 3))}
            if len(frames | images) < total:  # a label that some items carry and others do not
                break
        by_shot = {}
        for shot_id, lab in s.execute(select(ConceptLabel.shot_id, ConceptLabel.label)
                                             .where(ConceptLabel.rank <= 3, ConceptLabel.shot_id.is_not(None))
                                             .order_by(ConceptLabel.rank)):
            by_shot.setdefault(shot_id, []).append(lab)
        shot_of = {f"{v}@{f}": sh for v, f, sh in s.execute(
            select(Video.video_id, Keyframe.frame_idx, Keyframe.shot_id).join(Keyframe))}
    assert frames | images and len(frames | images) < total  # a filter that keeps some and drops others
    app = create_app({"DATA_DIR": str(labelled), "ENCODER": tiny_encoder, "TESTING": True})
    client = app.test_client()
    for spelled in (label, label.upper()):  # the facet ignores case
        body = client.get("/api/search", query_string={"q": "anything", "k": 1000, "label": spelled}).get_json()
        assert {r["item"] for r in body["results"]} == frames | images, spelled
    body = client.get("/api/search", query_string={"q": "anything", "k": 1000}).get_json()
    assert len(body["results"]) == total
    for r in body["results"]:  # every card carries its shot's (or image's) best three labels, best first
        assert 1 <= len(r["labels"]) <= 3 and all(set(x) == {"label", "score"} for x in r["labels"])
        if r["video_id"] is not None and shot_of[r["item"]] is not None:
            assert [x["label"] for x in r["labels"]] == by_shot[shot_of[r["item"]]]
        scores = [x["score"] for x in r["labels"]]
        assert scores == sorted(scores, reverse=True)
    page = client.get("/", query_string={"q": "anything"}).get_data(as_text=True)
    link = f'class="concept-label" href="/?{urlencode({"label": label})}" data-label="{label}"'
    assert link in page  # each label links to the search page filtered by it


def test_vocabulary_file_errors_name_the_line_random_weights(tmp_path):
    from app.concepts import VocabularyError, load_vocabulary

    cases = {
        "blank.txt": ("dog\ncat\n\nbird\n", "blank.txt:3: empty line"),
        "dup.txt": ("# my labels\nRed car\nblue car\nred CAR\n", "dup.txt:4: 'red CAR' repeats the label of line 2"),
        "long.txt": ("ok\n" + "x" * 201 + "\n", "long.txt:2: the label is 201 characters"),
        "many.txt": ("".join(f"label {i}\n" for i in range(10_001)), "many.txt:10001: more than 10,000 labels"),
        "latin1.txt": (b"dog\ncaf\xe9\n", "latin1.txt:2: not UTF-8"),
        "empty.txt": ("# nothing\n\n", "empty.txt: no labels"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(VocabularyError) as err:
            load_vocabulary(path)
        assert message in str(err.value), (name, str(err.value))
    ok = tmp_path / "ok.txt"
    ok.write_text("\n# comment\nred car\nDog\n\n\n")  # blank lines around the labels and comments are fine
    vocab = load_vocabulary(ok)
    assert vocab.labels == ("red car", "Dog") and vocab.prompts == ("a photo of red car", "a photo of Dog")
    assert vocab.identity == "file:" + hashlib.sha1(ok.read_bytes()).hexdigest()[:12]


def test_a_bad_vocabulary_stops_offline_py_with_the_line_random_weights(labelled, media_dir, tmp_path):
    bad = tmp_path / "words.txt"
    bad.write_text("guitar\nGuitar\n")
    done = cli("index", str(media_dir), *index_args(labelled), *FAST, "--vocabulary", str(bad))
    assert done.returncode == 2
    assert "error: words.txt:2: 'Guitar' repeats the label of line 1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_another_vocabulary_labels_everything_again_random_weights(labelled, media_dir, tiny_encoder, tmp_path):
    from app.models import Image, Video

    words = ["a red car", "a dog on grass", "moving shapes", "the sea", "a crowded street", "text on a screen"]
    vocab = tmp_path / "mine.txt"
    vocab.write_text("\n".join(words) + "\n")
    identity = "file:" + hashlib.sha1(vocab.read_bytes()).hexdigest()[:12]
    done = cli("index", str(media_dir), *index_args(labelled), *FAST, "--vocabulary", str(vocab))
    assert done.returncode == 0, done.stderr
    assert f"labelled with {identity} (6 labels)" in done.stdout, done.stdout
    check_against(labelled, tiny_encoder, words, [f"a photo of {w}" for w in words], identity)
    with session_of(labelled) as s:
        assert set(s.scalars(select(Video.concepts_vocab))) | set(s.scalars(select(Image.concepts_vocab))) == {identity}
    done = cli("index", str(media_dir), *index_args(labelled), *FAST)  # back to the default: labelled again
    assert done.returncode == 0 and "labelled with default-v1" in done.stdout, done.stdout
    check_against(labelled, tiny_encoder, *expected_prompts(), "default-v1")
