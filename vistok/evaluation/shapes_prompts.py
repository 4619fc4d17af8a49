"""A ShapesWorld prompt set that mirrors GenEval's six tasks, in the official metadata format and in
the language of ShapesWorld captions, and scenes rendered to satisfy a prompt (the detector ceiling).

    python -m vistok.evaluation.shapes_prompts > vistok/evaluation/prompts/shapes_geneval.jsonl
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np

from vistok.data.shapes import COLORS, NUMBERS, SHAPES, ShapesWorld
from vistok.evaluation.geneval import Detection, relative_position

PROMPT_FILE = os.path.join(os.path.dirname(__file__), "prompts", "shapes_geneval.jsonl")
RELATIONS = ("left of", "right of", "above", "below")


def shapes_geneval_prompts(seed: int = 0, per_task: int = 24) -> list[dict]:
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    kinds = [(c, s) for s in SHAPES for c in colors]
    pairs = [(a, b) for a, b in itertools.product(kinds, kinds) if a[1] != b[1]]

    def pick(items, n):
        idx = rng.choice(len(items), size=min(n, len(items)), replace=False)
        return [items[i] for i in sorted(idx)]

    out = []
    for c, s in kinds:
        out.append({"tag": "single_object", "prompt": f"a {c} {s}", "include": [{"class": s, "count": 1}]})
    for (c1, s1), (c2, s2) in pick(pairs, per_task):
        out.append({"tag": "two_object", "prompt": f"a {c1} {s1} and a {c2} {s2}",
                    "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}]})
    for (c, s), n in pick(list(itertools.product(kinds, (2, 3, 4))), per_task):
        out.append({"tag": "counting", "prompt": f"{NUMBERS[n]} {c} {s}s",
                    "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}]})
    for c, s in kinds:
        out.append({"tag": "colors", "prompt": f"a {c} {s}", "include": [{"class": s, "count": 1, "color": c}]})
    for ((c1, s1), (c2, s2)), rel in pick(list(itertools.product(pairs, RELATIONS)), per_task):
        out.append({"tag": "position", "prompt": f"a {c1} {s1} {rel} a {c2} {s2}",
                    "include": [{"class": s2, "count": 1}, {"class": s1, "count": 1, "position": [rel, 0]}]})
    for (c1, s1), (c2, s2) in pick(pairs, per_task):
        out.append({"tag": "color_attr", "prompt": f"a {c1} {s1} and a {c2} {s2}",
                    "include": [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]})
    return out


def _colors_in_prompt(prompt: str) -> list[str]:
    return [w for w in prompt.split() if w in COLORS]


def render_prompt(meta: dict, rng: np.random.Generator, image_size: int = 32, min_size: int = 7,
                  max_size: int = 10, tries: int = 2000) -> dict:
    """A ShapesWorld scene that satisfies the prompt: colours from the prompt text, layout by
    rejection sampling until every position clause holds and no boxes touch."""
    named = _colors_in_prompt(meta["prompt"])
    specs = []  # (shape, colour, clause index)
    for ci, req in enumerate(meta["include"]):
        color = req.get("color") or (named[ci] if ci < len(named) else named[0] if named else "red")
        if meta["tag"] in ("two_object", "position", "color_attr"):
            color = named[ci if meta["tag"] != "position" else 1 - ci] if len(named) == 2 else color
        specs += [(req["class"], color, ci)] * req["count"]
    for _ in range(tries):
        boxes = []
        for _spec in specs:
            s = int(rng.integers(min_size, max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(0, image_size - s + 1, size=2))
            boxes.append((x0, y0, x0 + s, y0 + s))
        if any(_gap(a, b) < 1 for a, b in itertools.combinations(boxes, 2)):
            continue
        ok = True
        for ci, req in enumerate(meta["include"]):
            if "position" not in req:
                continue
            rel, target = req["position"]
            mine = [Detection(b, 1.0) for b, sp in zip(boxes, specs) if sp[2] == ci]
            theirs = [Detection(b, 1.0) for b, sp in zip(boxes, specs) if sp[2] == target]
            ok = ok and all(rel in relative_position(m, t) for m in mine for t in theirs)
        if ok:
            return {"objects": [{"shape": sp[0], "color": sp[1], "box": b} for sp, b in zip(specs, boxes)]}
    raise RuntimeError(f"could not lay out a scene for '{meta['prompt']}' in {tries} tries")


def render_scene(meta_scene: dict, image_size: int = 32) -> np.ndarray:
    return ShapesWorld(image_size=image_size, size=1).render(meta_scene)


def _gap(a, b) -> int:
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def load_prompts(path: str = PROMPT_FILE) -> list[dict]:
    from vistok.image_files import read_prompts

    return read_prompts(path)


if __name__ == "__main__":
    for m in shapes_geneval_prompts():
        print(json.dumps(m))


def detector_ceiling(detector, prompts: list[dict] | None = None, per_prompt: int = 4, seed: int = 0) -> dict:
    """GenEval score of real ShapesWorld scenes rendered to satisfy each prompt: what a perfect
    generator would get with this detector."""
    from vistok.evaluation.geneval import evaluate_image, score

    rng = np.random.default_rng(seed)
    results = []
    for meta in prompts or load_prompts():
        for _ in range(per_prompt):
            image = render_scene(render_prompt(meta, rng))
            ok, _ = evaluate_image(image, meta, detector)
            results.append({"tag": meta["tag"], "correct": ok})
    return score(results)
