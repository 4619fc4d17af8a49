"""`evaluate.py captions`: image-to-text captions of ShapesWorld scenes scored against the scenes' metadata.

The grammar is the one ``vistok.data.shapes.caption_for`` writes, read case-insensitively with runs of
whitespace taken as one space; every word must be a word of the grammar (no punctuation, no synonyms):

    caption  := single " " RELATION " " single  |  phrase (" and " phrase)*
    single   := "a" COLOUR SHAPE                      -> one object
    phrase   := single  |  NUMBER COLOUR SHAPE "s"   -> NUMBER ("two".."six") objects of that kind
    RELATION := "left of" | "right of" | "above" | "below"   (of the first object relative to the second)

``caption_for`` never joins a counted phrase with another one ("two red circles and a blue square") nor writes
"a red circle and a red circle" for a two-object scene, but both read unambiguously and parse.

Word types of one caption against one scene (``score_caption``):

- ``shape``: the multiset of shapes named equals the scene's; ``colour``: the same for colours; ``count``: the
  number of objects named equals the scene's object count; ``objects``: the multiset of (colour, shape) pairs
  equals the scene's (shape, colour and count can all hold with the colours bound to the wrong shapes).
- ``relation``: defined (else None) only for scenes of exactly two objects of different kinds: True when the
  caption states a relation, its two objects are the scene's two objects, and ``relation(first box, second box)``
  of those scene objects is the stated relation. The "and" form, and any caption stating no relation, is False.
- ``exact``: the caption is a full and true description of the scene: ``objects`` (hence shape, colour and
  count) holds and, when the caption states a relation, that relation holds between scene objects of the named
  kinds. The "and" form of a two-object scene is exact (it states no relation, as half the ground-truth captions
  do), so ``exact`` does not require the ``relation`` word type, which asks whether a relation is stated and true.

``score_captions`` reports shares per word type, with floors from a reference caption list (the training
split's captions for the task): every scene captioned with the most common reference caption, the relation
word type with the most common reference caption that states a relation, and ``relation_prior``, the share of
relation scenes where the most common reference relation holds from the scene's first object to its second.
"""
from __future__ import annotations

import os
from collections import Counter

from vistok.data.shapes import COLORS, NUMBERS, SHAPES, relation
from vistok.evaluation.task import Task
from vistok.registry import register_task

RELATIONS = ("left of", "right of", "above", "below")
WORD_TYPES = ("shape", "colour", "count", "objects", "relation", "exact")
_PLURALS = {s + "s": s for s in SHAPES}
_COUNTS = {w: n for n, w in enumerate(NUMBERS) if n >= 2}


def _single(words: list[str]):
    """(colour, shape) of ``a COLOUR SHAPE``, or None."""
    if len(words) == 3 and words[0] == "a" and words[1] in COLORS and words[2] in SHAPES:
        return words[1], words[2]
    return None


def _phrase(words: list[str]):
    """The objects of one phrase (``a COLOUR SHAPE`` or ``NUMBER COLOUR SHAPEs``), or None."""
    one = _single(words)
    if one is not None:
        return [one]
    if len(words) == 3 and words[0] in _COUNTS and words[1] in COLORS and words[2] in _PLURALS:
        return [(words[1], _PLURALS[words[2]])] * _COUNTS[words[0]]
    return None


def parse_caption(text) -> dict | None:
    """``{"objects": [(colour, shape), ...], "relation": (0, "left of", 1) | None}`` of a caption in the
    ShapesWorld grammar (objects with multiplicity, in the order named; the relation as (index of the first
    object, relation, index of the second)), or None for text outside the grammar."""
    if not isinstance(text, str):
        return None
    words = text.lower().split()
    for rel in RELATIONS:
        n = len(rel.split())
        if len(words) == 6 + n and " ".join(words[3:3 + n]) == rel:
            a, b = _single(words[:3]), _single(words[3 + n:])
            if a is not None and b is not None:
                return {"objects": [a, b], "relation": (0, rel, 1)}
            return None
    objects, part = [], []
    for w in words + ["and"]:
        if w != "and":
            part.append(w)
            continue
        found = _phrase(part)
        if found is None:
            return None
        objects += found
        part = []
    return {"objects": objects, "relation": None} if objects else None


def _kind(o: dict) -> tuple:
    return o["color"], o["shape"]


def relation_scene(scene: dict) -> bool:
    """Whether the relation word type is defined for ``scene``: exactly two objects of different kinds."""
    objs = scene["objects"]
    return len(objs) == 2 and _kind(objs[0]) != _kind(objs[1])


def _relation_holds(objects: list, stated: tuple, scene: dict) -> bool:
    """Whether two distinct scene objects of the named kinds stand in the stated relation (first to second)."""
    i, rel, j = stated
    first, second = objects[i], objects[j]
    objs = scene["objects"]
    return any(relation(a["box"], b["box"]) == rel for ai, a in enumerate(objs) for bi, b in enumerate(objs)
               if ai != bi and _kind(a) == first and _kind(b) == second)


def score_caption(text, scene: dict) -> dict:
    """Booleans per word type (``relation`` None where undefined) and whether the caption parsed; see the module
    docstring for the definitions."""
    defined = relation_scene(scene)
    parsed = parse_caption(text)
    if parsed is None:
        return {"parsed": False, "shape": False, "colour": False, "count": False, "objects": False,
                "relation": False if defined else None, "relation_stated": False, "exact": False}
    named, objs = parsed["objects"], scene["objects"]
    stated = parsed["relation"]
    holds = stated is not None and _relation_holds(named, stated, scene)
    objects_ok = Counter(named) == Counter(_kind(o) for o in objs)
    return {
        "parsed": True,
        "shape": Counter(s for _, s in named) == Counter(o["shape"] for o in objs),
        "colour": Counter(c for c, _ in named) == Counter(o["color"] for o in objs),
        "count": len(named) == len(objs),
        "objects": objects_ok,
        # a relation scene has two different kinds, so "holds" already means the two named objects are the two
        # scene objects, in the stated order
        "relation": holds if defined else None,
        "relation_stated": stated is not None,
        "exact": objects_ok and (stated is None or holds),
    }


def _shares(captions: list, scenes: list[dict]) -> dict:
    rows = [score_caption(c, s) for c, s in zip(captions, scenes)]
    n = len(rows)
    out = {k: sum(r[k] for r in rows) / n if n else None for k in ("shape", "colour", "count", "objects", "exact")}
    rel = [r for r in rows if r["relation"] is not None]
    out["relation"] = sum(r["relation"] for r in rel) / len(rel) if rel else None
    out["relation_stated"] = sum(r["relation_stated"] for r in rel) / len(rel) if rel else None
    out["parsed"] = sum(r["parsed"] for r in rows) / n if n else None
    return out


def most_common(items):
    """The most frequent item (ties: the one seen first), or None for none."""
    counts = Counter(items)
    return counts.most_common(1)[0][0] if counts else None


def score_captions(captions: list, scenes: list[dict], reference_captions: list | None = None) -> dict:
    """Shares per word type over ``captions`` (caption i describes ``scenes[i]``); ``relation`` and
    ``relation_stated`` over the ``relation_scenes`` where the relation is defined (None when there are none).
    With ``reference_captions``: ``floor`` (the same shares when every scene gets the most common reference
    caption; ``relation`` / ``relation_stated`` with the most common reference caption that states a relation)
    and ``relation_prior`` (the share of relation scenes where the most common reference relation word holds
    from the scene's first object to its second); both None without reference captions."""
    captions, scenes = list(captions), list(scenes)
    if len(captions) != len(scenes):
        raise ValueError(f"score_captions: {len(captions)} captions for {len(scenes)} scenes; expected one per scene")
    rel_scenes = [s for s in scenes if relation_scene(s)]
    out = {**_shares(captions, scenes), "num_captions": len(captions), "relation_scenes": len(rel_scenes),
           "num_reference": None, "floor": None, "relation_prior": None, "relation_prior_word": None}
    if reference_captions is None:
        return out
    reference_captions = list(reference_captions)
    parsed = [(c, parse_caption(c)) for c in reference_captions]
    top = most_common(reference_captions)
    top_rel = most_common(c for c, p in parsed if p is not None and p["relation"] is not None)
    floor = {"caption": top, "relation_caption": top_rel, **_shares([top] * len(scenes), scenes)}
    rel_floor = _shares([top_rel] * len(scenes), scenes) if top_rel is not None else {}
    floor["relation"] = rel_floor.get("relation")
    floor["relation_stated"] = rel_floor.get("relation_stated")
    del floor["parsed"]
    word = most_common(p["relation"][1] for _, p in parsed if p is not None and p["relation"] is not None)
    out["floor"] = floor
    out["relation_prior_word"] = word
    if word is not None and rel_scenes:
        out["relation_prior"] = sum(relation(s["objects"][0]["box"], s["objects"][1]["box"]) == word
                                    for s in rel_scenes) / len(rel_scenes)
    out["num_reference"] = len(reference_captions)
    return out


def read_caption_rows(folder: str) -> tuple[list[dict], dict]:
    """(the rows of ``folder/captions.jsonl``, ``folder/sampling.json``) with what scoring needs checked."""
    from vistok.io import read_json, read_jsonl

    path = os.path.join(folder, "captions.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"--samples {folder}: no captions.jsonl there (expected the 'captions' writer's output of "
                         f"an image-to-text sample.py run: one {{\"index\", \"caption\", \"item\"}} per line)")
    rows = []
    for n, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("caption"), str):
            raise ValueError(f"{path}:{n}: expected an object with a string 'caption'")
        item = row.get("item")
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{path}:{n}: expected an integer 'item' (the index of the captioned scene in the "
                             f"split sampling.json names), got {item!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: holds no captions; expected one {{\"index\", \"caption\", \"item\"}} per line")
    meta_path = os.path.join(folder, "sampling.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"--samples {folder}: no sampling.json there (expected sample.py's record, with the "
                         f"'data' config and the 'split' the captioned scenes came from)")
    meta = read_json(meta_path, "sampling.json")
    data = meta.get("data") if isinstance(meta, dict) else None
    if not isinstance(data, dict) or data.get("type") != "shapes":
        got = data.get("type") if isinstance(data, dict) else data
        raise ValueError(f"{meta_path}: 'data' is {got!r}; expected a ShapesWorld data config "
                         f"({{\"type\": \"shapes\", ...}}): captions are scored against ShapesWorld scene metadata")
    if meta.get("split") not in ("train", "test"):
        raise ValueError(f"{meta_path}: 'split' is {meta.get('split')!r}; expected 'train' or 'test'")
    return rows, meta


@register_task("captions")
class CaptionsTask(Task):
    help = ("image-to-text captions of ShapesWorld scenes: shares of captions right on shape / colour / count / "
            "relation / exact against the scenes' metadata, with the floor of the most common training caption")

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--samples", required=True, help="a sample.py folder with captions.jsonl and sampling.json")
        p.add_argument("--reference-items", type=ranged(int, 1), default=5000,
                       help="training scenes whose captions give the floor (the first N of the train split)")

    @classmethod
    def run(cls, args) -> dict:
        from vistok.data.base import build_dataset

        rows, meta = read_caption_rows(args.samples)
        data = build_dataset(meta["data"], meta["split"])
        scenes = []
        for row in rows:
            if not 0 <= row["item"] < len(data):
                raise ValueError(f"{os.path.join(args.samples, 'captions.jsonl')}: item {row['item']} (index "
                                 f"{row.get('index')}) is outside the {meta['split']} split (0..{len(data) - 1})")
            scenes.append(data.scene(row["item"]))
        train = build_dataset(meta["data"], "train")
        reference = [train.scene(i)["caption"] for i in range(min(len(train), args.reference_items))]
        result = score_captions([r["caption"] for r in rows], scenes, reference)
        result["split"] = meta["split"]
        result["protocol"] = (
            f"ShapesWorld captions of {len(rows)} {meta['split']} scenes (sampling.json's data), parsed in the "
            "caption_for grammar (case and spacing ignored, every word in the grammar; anything else fails every "
            "word type); shape / colour / count / objects: the multiset of shapes / colours / the number of objects "
            "/ the (colour, shape) pairs named equals the scene's; relation: only on scenes of exactly two objects "
            "of different kinds (relation_scenes), true when the caption states a relation and it holds from the "
            "scene object of the first named kind to that of the second (the 'and' form counts false); "
            "relation_stated: the share of those captions stating any relation; exact: objects right and any "
            "stated relation true (the 'and' form can be exact); floor: every scene captioned with the most common "
            f"of the first {len(reference)} training captions, its relation with the most common training caption "
            "that states a relation; relation_prior: the share of relation scenes where the most common training "
            "relation word holds from the scene's first object to its second")
        return result
