"""`offline.py search`: the server's ranking from a terminal (tiny random-weight CLIP, so only the mechanics and
the agreement with the server are checked, not what the words mean)."""
from __future__ import annotations

import json

import offline
from app.paths import DataLayout
from tests.conftest import TINY_CONFIG
from tests.processes import cli

ARGS = ["--model-config", str(TINY_CONFIG), "--device", "cpu"]


def test_an_image_finds_its_keyframe_and_text_ranks_as_the_server_does(indexed, client, kf, capsys):
    jpg = DataLayout.from_data_dir(indexed).keyframes_dir / "long_shot" / "002.jpg"
    assert offline.main(["search", "--image", str(jpg), "--k", "3", "--json", "--data-dir", str(indexed), *ARGS]) == 0
    body = json.loads(capsys.readouterr().out)
    top = body["results"][0]
    assert top["item"] == kf("long_shot/2") and top["score"] >= 0.99 and top["rank"] == 1
    assert top["picture"] == str(jpg) and len(body["results"]) == 3

    assert offline.main(["search", "a dog on a beach", "--k", "10", "--json", "--data-dir", str(indexed), *ARGS]) == 0
    mine = [r["item"] for r in json.loads(capsys.readouterr().out)["results"]]
    served = [r["item"] for r in client.get("/api/search?q=a+dog+on+a+beach&k=10").get_json()["results"]]
    assert mine == served


def test_lines_for_people_and_clear_errors(indexed, capsys):
    from tests.helpers import offline_main

    done = cli("search", "anything", "--k", "2", "--video", "long_shot", "--data-dir", str(indexed), *ARGS)
    assert done.returncode == 0, done.stderr
    assert "note: This collection was indexed with random weights" in done.stdout  # as the pages say
    lines = [ln for ln in done.stdout.splitlines() if not ln.startswith("note:")]
    assert len(lines) == 2 and all("long_shot 00:00:" in ln and "(frame " in ln and ".jpg" in ln for ln in lines)
    for bad, message in ((["--k", "0"], "k must be between 1 and 1000"), ([], "give a text query, --image FILE"),
                         (["--image", "/no/such.jpg"], "/no/such.jpg"),
                         (["red", "--box", "1,1,2,2"], "--box is a region of --image")):
        done = offline_main(capsys, "search", *bad, "--data-dir", str(indexed), *ARGS)  # refusals: in this process
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
