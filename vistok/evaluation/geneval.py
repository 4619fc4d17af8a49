"""GenEval scoring (djghosh13/geneval rules) with pluggable detectors.

Folder layout (official): ``<root>/<00000>/metadata.jsonl`` (one JSON line: the prompt's metadata
``{tag, prompt, include: [{class, count, color?, position?: [relation, index]}], exclude?: [...]}``)
and ``<root>/<00000>/samples/<n>.png``.

Rules (matching the official evaluator):
- detections with score > threshold (strict, compared in float32): 0.3, or 0.9 for every class on a
  ``counting`` prompt; at most 16 per class (highest scores); no NMS.
- include clauses AND: the top-``count`` detections of the class must exist; their colours must all be
  the requested colour; each must stand in the requested relation to every object of the referenced
  earlier clause (a failed clause leaves no group to refer to). Lower-ranked detections neither help
  nor hurt.
- exclude clauses OR: the image fails if at least ``count`` kept detections of the class exist.
- position: centres, the offset shrunk by 0.1 x (sum of the two box sizes) per axis, divided by the
  ORIGINAL centre distance, thresholds +-0.5 exclusive (y grows downwards); a diagonal layout
  satisfies two relations.
- score: per task, the mean of per-image correctness; overall, the unweighted mean over the tasks
  present.

A detector is any object with ``detect(image: HxWx3 uint8) -> {class: [Detection, ...]}`` and
``colors(image, detections, classname) -> [colour name, ...]``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from vistok.evaluation.task import Task
from vistok.registry import register_task

THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD = 0.3, 0.9, 16, 0.1
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class Detection:
    box: tuple  # x0, y0, x1, y1 (pixels, y down)
    score: float
    color: str | None = None  # detectors that know the colour (the exact ShapesWorld one) fill it in
    extra: dict = field(default_factory=dict)


def keep_detections(detected: dict, tag: str) -> dict:
    threshold = np.float32(COUNTING_THRESHOLD if tag == "counting" else THRESHOLD)
    out = {}
    for cls, dets in detected.items():
        kept = [d for d in dets if np.float32(d.score) > threshold]
        kept.sort(key=lambda d: -float(d.score))
        out[cls] = kept[:MAX_OBJECTS]
    return out


def relative_position(a: Detection, b: Detection) -> set:
    """Relations of box a relative to box b (official formula)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def evaluate_image(image: np.ndarray, metadata: dict, detector) -> tuple[bool, str]:
    """(correct, reason) for one image under the official rules."""
    detected = keep_detections(detector.detect(image), metadata["tag"])
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = detected.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = detector.colors(image, found, cls)
                if colors.count(req["color"]) != count:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {colors}")
            if "position" in req and matched:
                relation, target = req["position"]
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {cls} {relation}")
                else:
                    for obj in found:
                        for tgt in groups[target]:
                            if relation not in relative_position(obj, tgt):
                                matched = False
                                reasons.append(f"expected {cls} {relation} target, found {sorted(relative_position(obj, tgt))}")
                                break
                        if not matched:
                            break
        correct = correct and matched
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        if len(detected.get(req["class"], [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}")
    return correct, "; ".join(reasons)


def score(results: list[dict]) -> dict:
    """results: [{tag, correct}] per image -> per-task means and their unweighted mean ('overall')."""
    by_task: dict[str, list[bool]] = {}
    for r in results:
        by_task.setdefault(r["tag"], []).append(bool(r["correct"]))
    out = {t: float(np.mean(v)) for t, v in by_task.items()}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def read_folder(root: str):
    """Yield (metadata, [image paths]) for every prompt folder under ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"GenEval folder '{root}' does not exist")
    prompts = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not prompts:
        raise ValueError(f"GenEval folder '{root}' has no prompt folders (<00000>/metadata.jsonl + samples/)")
    for d in prompts:
        meta_path = os.path.join(root, d, "metadata.jsonl")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} is missing")
        with open(meta_path, encoding="utf-8") as f:
            try:
                meta = json.loads(f.readline())
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
        sdir = os.path.join(root, d, "samples")
        files = sorted(os.path.join(sdir, f) for f in os.listdir(sdir) if f.endswith(".png")) if os.path.isdir(sdir) else []
        if not files:
            raise ValueError(f"{sdir} holds no samples")
        yield meta, files


def evaluate_folder(root: str, detector) -> dict:
    from PIL import Image

    results = []
    for meta, files in read_folder(root):
        for path in files:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
            ok, reason = evaluate_image(image, meta, detector)
            results.append({"tag": meta["tag"], "prompt": meta["prompt"], "file": path, "correct": ok, "reason": reason})
    out = score(results)
    out["num_images"] = len(results)
    return out, results


def build_detector(name: str):
    if name == "shapes":
        from vistok.evaluation.shapes_detector import ShapesDetector

        return ShapesDetector()
    raise ValueError(f"detector '{name}': expected 'shapes' (a real detector plugs in through "
                     f"vistok.evaluation.geneval_detectors.MMDetDetector in Python)")


@register_task("geneval")
class GenEvalTask(Task):
    help = "GenEval score of a folder in the official layout (<00000>/metadata.jsonl + samples/)"

    @classmethod
    def add_arguments(cls, p) -> None:
        p.add_argument("--samples", required=True)
        p.add_argument("--detector", default="shapes", help="'shapes': the exact ShapesWorld detector")
        p.add_argument("--ceiling", action="store_true", help="also score real scenes rendered for the same prompts")

    @classmethod
    def score_generator(cls, model, decode, num_samples: int, seed: int, cfg) -> dict:
        """During training: the GenEval score (ShapesWorld detector) of ``num_samples`` images of a text-to-image
        generator, the ShapesWorld GenEval prompts in turn (images per prompt: num_samples / prompts, at least 1)."""
        from vistok.evaluation.during_training import sample_in_batches
        from vistok.evaluation.shapes_prompts import load_prompts
        from vistok.image_files import to_uint8

        prompts = load_prompts()
        metas = [prompts[i % len(prompts)] for i in range(num_samples)]
        codes = sample_in_batches(model, [m["prompt"] for m in metas], seed, cfg.train.gen_eval, key="prompts")
        images = to_uint8(decode(codes).float().cpu().clamp(-1, 1))
        detector = build_detector("shapes")
        results = [{"tag": m["tag"], "correct": evaluate_image(img[..., 0] if img.shape[-1] == 1 else img, m, detector)[0]}
                   for m, img in zip(metas, images)]
        return score(results)

    @classmethod
    def run(cls, args) -> dict:
        detector = build_detector(args.detector)
        result, rows = evaluate_folder(args.samples, detector)
        if args.ceiling:
            from vistok.evaluation.shapes_prompts import detector_ceiling

            result["detector_ceiling"] = detector_ceiling(detector, [m for m, _ in read_folder(args.samples)])["overall"]
        result["protocol"] = (f"GenEval rules (thresholds 0.3 / 0.9 counting, max 16 per class, position shrink 0.1), "
                              f"detector '{args.detector}'")
        return result
