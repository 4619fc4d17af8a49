"""Scoring image-to-text captions of ShapesWorld scenes (vistok.evaluation.captions): the caption grammar read back
from every form caption_for writes, each word type on hand-made cases, the shares and floors of score_captions, and
`evaluate.py captions` on a hand-written samples folder."""
import json
from collections import Counter

import pytest

from vistok.data.shapes import ShapesWorld, caption_for, relation
from vistok.evaluation.captions import parse_caption, score_caption, score_captions
from tests.conftest import call_cli, last_json

# red circle left of a blue square (same row), the relation scene of the hand-made cases
LEFT, RIGHT = (0, 0, 10, 10), (20, 0, 30, 10)
REL_SCENE = {"objects": [{"shape": "circle", "color": "red", "box": LEFT}, {"shape": "square", "color": "blue", "box": RIGHT}]}
ONE = {"objects": [{"shape": "circle", "color": "red", "box": LEFT}]}
TWO_SAME = {"objects": [{"shape": "square", "color": "green", "box": LEFT}, {"shape": "square", "color": "green", "box": RIGHT}]}


def kinds(objects):
    return Counter((o["color"], o["shape"]) for o in objects)


def test_parse_round_trip_on_every_caption_form():
    data = ShapesWorld(split="test", max_objects=3)
    forms = Counter()
    for i in range(300):
        objs = data.scene(i)["objects"]
        for use_and in (False, True):
            text = caption_for(objs, use_and=use_and)
            parsed = parse_caption(text)
            assert parsed is not None, text
            assert Counter(parsed["objects"]) == kinds(objs), text
            if parsed["relation"] is not None:
                first, rel, second = parsed["relation"]
                assert (first, second) == (0, 1) and relation(objs[0]["box"], objs[1]["box"]) == rel
                forms["relation"] += 1
            else:
                forms["and" if " and " in text else ("count" if len(objs) > 1 else "single")] += 1
            assert score_caption(text, data.scene(i))["exact"]
    assert all(forms[f] > 0 for f in ("single", "count", "relation", "and")), forms


def test_parse_is_tolerant_of_case_and_spaces_and_strict_on_words():
    assert parse_caption("  Three RED   circles ") == {"objects": [("red", "circle")] * 3, "relation": None}
    assert parse_caption("a Red circle  RIGHT of a blue square")["relation"] == (0, "right of", 1)
    assert parse_caption("a red circle and a blue square and a red circle")["objects"] == [
        ("red", "circle"), ("blue", "square"), ("red", "circle")]
    for bad in ("", "   ", "a red circle.", "an red circle", "one red circle", "two red circle", "a red circles",
                "a purple circle", "a red hexagon", "a red circle and", "and a red circle", "a red circle near a blue square",
                "a red circle left a blue square", "two red circles left of a blue square", "a red circle a blue square",
                "red circle", None, 3):
        assert parse_caption(bad) is None, bad


def test_word_types_true_and_false():
    s = score_caption("a red circle left of a blue square", REL_SCENE)
    assert all(s[k] for k in ("shape", "colour", "count", "objects", "relation", "exact"))
    # swapped relation word: every object right, the relation (and so exact) wrong
    s = score_caption("a red circle right of a blue square", REL_SCENE)
    assert s["shape"] and s["colour"] and s["count"] and not s["relation"] and not s["exact"]
    # the same fact said from the other object holds
    assert score_caption("a blue square right of a red circle", REL_SCENE)["relation"]
    # the "and" form names the objects but states no relation: relation False, exact True
    s = score_caption("a blue square and a red circle", REL_SCENE)
    assert s["objects"] and s["relation"] is False and not s["relation_stated"] and s["exact"]
    # wrong colour
    s = score_caption("a green circle left of a blue square", REL_SCENE)
    assert s["shape"] and not s["colour"] and s["count"] and not s["relation"] and not s["exact"]
    # colours bound to the wrong shapes: shape, colour, count hold, objects / exact do not
    s = score_caption("a blue circle left of a red square", REL_SCENE)
    assert s["shape"] and s["colour"] and s["count"] and not s["objects"] and not s["relation"] and not s["exact"]
    # wrong count
    s = score_caption("three green squares", TWO_SAME)
    assert s["shape"] is False and s["colour"] is False and s["count"] is False and not s["exact"]
    s = score_caption("two green squares", TWO_SAME)
    assert s["exact"] and s["relation"] is None  # two objects of one kind: relation undefined
    s = score_caption("a red circle", REL_SCENE)
    assert not s["count"] and not s["shape"] and not s["exact"] and s["relation"] is False
    s = score_caption("a red circle", ONE)
    assert s["exact"] and s["relation"] is None
    # a relation between two objects of one kind, on a relation scene: the named objects are not the scene's
    assert score_caption("a red circle left of a red circle", REL_SCENE)["relation"] is False
    # unparseable text fails every word type, relation False where defined
    s = score_caption("a red blob", REL_SCENE)
    assert not s["parsed"] and not any(s[k] for k in ("shape", "colour", "count", "objects", "exact")) and s["relation"] is False
    assert score_caption("a red blob", ONE)["relation"] is None


def test_score_captions_on_ground_truth():
    data = ShapesWorld(split="test", max_objects=2)
    scenes = [data.scene(i) for i in range(200)]
    caps = [s["caption"] for s in scenes]
    out = score_captions(caps, scenes)
    assert out["shape"] == out["colour"] == out["count"] == out["objects"] == out["exact"] == out["parsed"] == 1.0
    rel_caps = [c for s, c in zip(scenes, caps) if len(s["objects"]) == 2 and kinds(s["objects"]) != Counter(
        {(s["objects"][0]["color"], s["objects"][0]["shape"]): 2})]
    assert out["relation_scenes"] == len(rel_caps) > 0
    share = sum(" and " not in c for c in rel_caps) / len(rel_caps)
    assert 0 < share < 1 and out["relation"] == pytest.approx(share) and out["relation_stated"] == pytest.approx(share)
    assert out["num_captions"] == 200 and out["floor"] is None and out["relation_prior"] is None
    json.dumps(out)
    with pytest.raises(ValueError, match="one per scene"):
        score_captions(caps[:3], scenes[:2])


def test_floor_by_hand():
    scenes = [ONE, REL_SCENE, TWO_SAME]
    reference = ["a red circle", "a blue square right of a red circle", "a red circle", "two green squares", "nonsense"]
    out = score_captions(["a red circle", "a blue square and a red circle", "two green circles"], scenes, reference)
    # "two green circles" for two green squares: colour and count right, shape wrong
    assert out["shape"] == pytest.approx(2 / 3) and out["colour"] == 1.0 and out["count"] == 1.0
    assert out["objects"] == pytest.approx(2 / 3) and out["exact"] == pytest.approx(2 / 3)
    assert out["relation_scenes"] == 1 and out["relation"] == 0.0 and out["relation_stated"] == 0.0
    floor = out["floor"]
    # "a red circle" everywhere: right on ONE only; "a blue square right of a red circle" holds on REL_SCENE
    assert floor["caption"] == "a red circle" and floor["relation_caption"] == "a blue square right of a red circle"
    for k in ("shape", "colour", "count", "objects", "exact"):
        assert floor[k] == pytest.approx(1 / 3), k
    assert floor["relation"] == 1.0 and floor["relation_stated"] == 1.0
    # the most common reference relation word is "right of"; REL_SCENE's first object is left of its second
    assert out["relation_prior_word"] == "right of" and out["relation_prior"] == 0.0 and out["num_reference"] == 5
    no_rel = score_captions(["a red circle"], [REL_SCENE], ["a red circle"])
    assert no_rel["floor"]["relation_caption"] is None and no_rel["floor"]["relation"] is None
    assert no_rel["relation_prior"] is None
    json.dumps(out)


DATA = {"type": "shapes", "image_size": 32, "size": 40, "max_objects": 2}


def write_samples(folder, rows, data=DATA, split="test"):
    folder.mkdir(exist_ok=True)
    (folder / "sampling.json").write_text(json.dumps({"data": data, "split": split, "complete": True,
                                                      "vistok_version": "test", "num_images": len(rows)}))
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_task(tmp_path):
    test, train = ShapesWorld(split="test", size=40, max_objects=2), ShapesWorld(split="train", size=40, max_objects=2)
    items = [3, 1, 4, 1, 5, 9, 2, 6, 30, 35]
    caps = [test.scene(i)["caption"] for i in items]
    caps[2] = "a purple blob"
    rows = [{"index": n, "caption": c, "item": i} for n, (c, i) in enumerate(zip(caps, items))]
    write_samples(tmp_path / "s", rows)
    out = tmp_path / "result.json"
    result = last_json(call_cli(["evaluate.py", "captions", "--samples", tmp_path / "s", "--reference-items", "25",
                                 "--out", out]))
    expected = score_captions(caps, [test.scene(i) for i in items], [train.scene(i)["caption"] for i in range(25)])
    for k, v in expected.items():
        assert result[k] == v, k
    assert result["exact"] == pytest.approx(0.9) and result["parsed"] == pytest.approx(0.9)
    assert result["task"] == "captions" and result["split"] == "test" and "relation_prior" in result["protocol"]
    assert json.loads(out.read_text()) == result


def test_cli_task_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = call_cli(["evaluate.py", "captions", "--samples", tmp_path / "empty"], check=False)
    assert proc.returncode == 2 and "captions.jsonl" in proc.stderr
    write_samples(tmp_path / "mnist", [{"index": 0, "caption": "a red circle", "item": 0}], data={"type": "mnist"})
    proc = call_cli(["evaluate.py", "captions", "--samples", tmp_path / "mnist"], check=False)
    assert proc.returncode == 2 and "sampling.json" in proc.stderr and "shapes" in proc.stderr
    write_samples(tmp_path / "noitem", [{"index": 0, "caption": "a red circle"}])
    proc = call_cli(["evaluate.py", "captions", "--samples", tmp_path / "noitem"], check=False)
    assert proc.returncode == 2 and "captions.jsonl:1" in proc.stderr and "'item'" in proc.stderr
    write_samples(tmp_path / "far", [{"index": 0, "caption": "a red circle", "item": 40}])
    proc = call_cli(["evaluate.py", "captions", "--samples", tmp_path / "far"], check=False)
    assert proc.returncode == 2 and "outside the test split" in proc.stderr
    (tmp_path / "nometa").mkdir()
    (tmp_path / "nometa" / "captions.jsonl").write_text(json.dumps({"index": 0, "caption": "a", "item": 0}) + "\n")
    proc = call_cli(["evaluate.py", "captions", "--samples", tmp_path / "nometa"], check=False)
    assert proc.returncode == 2 and "no sampling.json" in proc.stderr
