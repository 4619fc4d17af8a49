"""ShapesWorld: a procedural 2-D world of coloured shapes, generated on the fly from (seed, index).

Each scene has 1..max_objects non-overlapping shapes on a black background. Every item carries a
class label (shape x colour of the first object), a caption ("a red circle left of a blue square",
"three green triangles") and structured metadata (shape, colour, box, counts) that GenEval-style
scoring checks against. Nothing is stored: item i of a split is always the same image.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.registry import register_dataset
from vistok.schema import NonNegInt, PosInt, Prob

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (40, 60, 240),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003}


def render_shape(canvas: np.ndarray, shape: str, color, box) -> None:
    """Draw a filled shape into ``canvas`` (H, W, 3 uint8) inside ``box`` = (x0, y0, x1, y1), exclusive."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    if shape == "square":
        mask = np.ones((h, w), bool)
    elif shape == "circle":
        mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1.0
    elif shape == "triangle":  # apex up, base at the bottom
        mask = np.abs(xx - w / 2) <= (yy / h) * (w / 2)
    else:
        raise ValueError(f"unknown shape '{shape}'; expected one of {SHAPES}")
    canvas[y0:y1, x0:x1][mask] = color


def relation(a_box, b_box) -> str:
    """Dominant spatial relation of box a relative to box b (image y axis points down)."""
    ax, ay = (a_box[0] + a_box[2]) / 2, (a_box[1] + a_box[3]) / 2
    bx, by = (b_box[0] + b_box[2]) / 2, (b_box[1] + b_box[3]) / 2
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption_for(objects: list[dict], use_and: bool = False) -> str:
    """The caption of a scene; two different objects are described by their relation, or with
    ``use_and`` as "a X and a Y" (the forms of GenEval's position and two-object/colour prompts)."""
    if len(objects) == 1:
        o = objects[0]
        return f"a {o['color']} {o['shape']}"
    kinds = {(o["color"], o["shape"]) for o in objects}
    if len(kinds) == 1:
        o = objects[0]
        return f"{NUMBERS[len(objects)]} {o['color']} {o['shape']}s"
    if len(objects) == 2:
        a, b = objects
        if use_and:
            return f"a {a['color']} {a['shape']} and a {b['color']} {b['shape']}"
        return f"a {a['color']} {a['shape']} {relation(a['box'], b['box'])} a {b['color']} {b['shape']}"
    return " and ".join(f"a {o['color']} {o['shape']}" for o in objects)


@register_dataset("shapes")
class ShapesWorld(Dataset):
    """``size`` scenes per split; ``same_kind_prob`` makes counting scenes (all objects alike)."""

    def __init__(
        self,
        split: str = "train",
        image_size: PosInt = 32,
        size: PosInt = 20000,
        max_objects: PosInt = 1,
        min_size: PosInt = 8,
        max_size: PosInt = 14,
        same_kind_prob: Prob = 0.3,
        seed: NonNegInt = 0,
    ):
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"shapes split '{split}': expected one of {tuple(_SPLIT_OFFSET)}")
        if not 1 <= max_objects <= len(NUMBERS) - 1:
            raise ValueError(f"shapes: max_objects={max_objects}; expected 1..{len(NUMBERS) - 1}")
        if not 2 <= min_size <= max_size <= image_size:
            raise ValueError(f"shapes: need 2 <= min_size <= max_size <= image_size, got {min_size}, {max_size}, {image_size}")
        self.split, self.image_size, self.size = split, image_size, size
        self.max_objects, self.min_size, self.max_size = max_objects, min_size, max_size
        self.same_kind_prob, self.seed = same_kind_prob, seed
        self.num_classes = len(SHAPES) * len(COLORS)

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> dict:
        """Metadata of scene i: objects (shape, color, box), counts per (color, shape), caption."""
        if not 0 <= i < self.size:
            raise IndexError(f"ShapesWorld index {i} out of range 0..{self.size - 1}")
        rng = np.random.default_rng([self.seed, _SPLIT_OFFSET[self.split], i])
        n = int(rng.integers(1, self.max_objects + 1))
        same = n > 1 and rng.random() < self.same_kind_prob
        colors = list(COLORS)
        kind = (colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))])
        objects, boxes = [], []
        for _ in range(n):
            color, shape = kind if same else (colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))])
            for _attempt in range(100):
                s = int(rng.integers(self.min_size, self.max_size + 1))
                x0 = int(rng.integers(0, self.image_size - s + 1))
                y0 = int(rng.integers(0, self.image_size - s + 1))
                box = (x0, y0, x0 + s, y0 + s)
                if all(_gap(box, b) >= 1 for b in boxes):
                    break
            else:
                continue  # no room: the scene keeps fewer objects (its caption says so)
            boxes.append(box)
            objects.append({"shape": shape, "color": color, "box": box})
        counts: dict[str, int] = {}
        for o in objects:
            key = f"{o['color']} {o['shape']}"
            counts[key] = counts.get(key, 0) + 1
        first = objects[0]
        label = SHAPES.index(first["shape"]) * len(COLORS) + list(COLORS).index(first["color"])
        caption = caption_for(objects, use_and=bool(rng.random() < 0.5))
        return {"objects": objects, "counts": counts, "caption": caption, "label": label}

    def render(self, meta: dict) -> np.ndarray:
        canvas = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        for o in meta["objects"]:
            render_shape(canvas, o["shape"], COLORS[o["color"]], o["box"])
        return canvas

    def __getitem__(self, i: int) -> dict:
        meta = self.scene(i)
        img = torch.from_numpy(self.render(meta)).permute(2, 0, 1).float() / 127.5 - 1
        return {"image": img, "label": meta["label"], "caption": meta["caption"]}

    def __repr__(self) -> str:
        return f"ShapesWorld(split={self.split!r}, n={self.size}, max_objects={self.max_objects})"


def _gap(a, b) -> int:
    """Pixels between two boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
