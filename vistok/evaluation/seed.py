"""`evaluate.py seed`: a SEED tokenizer's held-out figures from a training run or a release. Stage I: image->text
and text->image retrieval R@1 / R@5 with chance alongside (a retrieved caption is a hit when its text equals the
query's: ShapesWorld repeats captions; chance is computed the same way). Stage II: codebook usage, perplexity, the
reconstruction cosine of the causal embeddings and the generation embedding's cosine to its target."""
from __future__ import annotations

import os

import torch

from vistok.evaluation.task import Task
from vistok.registry import register_task


def tokenizer_and_data(path: str):
    """(the SEED tokenizer of a run / release, the data config it was trained on)."""
    from vistok.loading import model_from_run
    from vistok.release_format import PIPELINE_NAME, component_of_kind

    if os.path.isfile(os.path.join(path, PIPELINE_NAME)):
        model, data = component_of_kind(path, "tokenizer")
    else:
        model, cfg, _ = model_from_run(path)
        data = cfg.data
    if model.model_type != "seed_tokenizer":
        raise ValueError(f"--tokenizer {path}: a '{model.model_type}' model, not a SEED tokenizer")
    return model.eval(), data


def held_out_batches(data_cfg, batch_size: int, max_items: int):
    from vistok.data.base import build_dataset

    data = build_dataset(data_cfg, "test")
    n = min(len(data), max_items) if max_items else len(data)
    for i in range(0, n, batch_size):
        items = [data[j] for j in range(i, min(n, i + batch_size))]
        yield {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}


@register_task("seed")
class SEEDTask(Task):
    help = "SEED tokenizer: stage-I retrieval R@1/R@5 (with chance), stage-II codebook usage / perplexity / cosines"

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--tokenizer", required=True, help="a SEED training run or a release holding one")
        p.add_argument("--batch-size", type=ranged(int, 1), default=250)
        p.add_argument("--max-items", type=ranged(int, 0), default=1000, help="held-out pairs (0: the whole split)")

    @classmethod
    def run(cls, args) -> dict:
        model, data = tokenizer_and_data(args.tokenizer)
        with torch.no_grad():
            result = model.evaluate(held_out_batches(data, args.batch_size, args.max_items))
        protocol = ("held-out split; a retrieved caption is a hit when its text equals the query's, chance computed "
                    "the same way" if model.stage == 1 else "held-out split; usage = share of the codebook used; "
                    "cosines averaged over queries and images")
        return {"stage": model.stage, **result, "protocol": protocol}


def detected_counts(detector, image: torch.Tensor) -> dict:
    """{"<colour> <shape>": n} of what the exact ShapesWorld detector reads in one image (C,H,W in [-1, 1])."""
    import numpy as np

    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    counts: dict[str, int] = {}
    for shape, dets in detector.detect(np.ascontiguousarray(arr)).items():
        for d in dets:
            key = f"{d.color} {shape}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def scene_match(detector, images: torch.Tensor, scenes: list[dict]) -> float:
    """Share of images whose detected objects (shape, colour, count) are exactly their source scene's."""
    hits = [detected_counts(detector, img) == scene["counts"] for img, scene in zip(images, scenes)]
    return sum(hits) / max(len(hits), 1)


@register_task("seed-decode")
class SEEDDecodeTask(Task):
    help = ("SEED codes -> images: the share of held-out ShapesWorld scenes whose decoded image the exact detector "
            "reads as the source scene (shape, colour, count), with the floor of random codes and the real scenes' ceiling")

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--pipeline", required=True, help="a 'seed' release (tokenizer + decoder)")
        p.add_argument("--max-items", type=ranged(int, 1), default=200)
        p.add_argument("--batch-size", type=ranged(int, 1), default=50)
        p.add_argument("--seed", type=ranged(int, 0), default=0)
        p.add_argument("--grid", default="", help="also save originals / decoded / random-code images here (PNG)")

    @classmethod
    def run(cls, args) -> dict:
        from vistok.data.base import build_dataset
        from vistok.evaluation.shapes_detector import ShapesDetector
        from vistok.pipelines.base import Pipeline

        pipe = Pipeline.from_pretrained(args.pipeline)
        if not pipe.data or pipe.data.get("type") != "shapes":
            raise ValueError(f"--pipeline {args.pipeline}: seed-decode scores ShapesWorld scenes; this release was "
                             f"trained on {pipe.data.get('type') if pipe.data else 'no recorded data'}")
        data = build_dataset(pipe.data, "test")
        n = min(len(data), args.max_items)
        detector, g = ShapesDetector(), torch.Generator().manual_seed(args.seed)
        real, decoded, rand, scenes = [], [], [], [data.scene(i) for i in range(n)]
        with torch.no_grad():
            for i in range(0, n, args.batch_size):
                x = torch.stack([data[j]["image"] for j in range(i, min(n, i + args.batch_size))])
                codes = pipe.encode(x)
                noise = torch.randint(0, pipe.tokenizer.codebook_size, codes.shape, generator=g)
                real.append(x)
                decoded.append(pipe.decode(codes, generator=torch.Generator().manual_seed(args.seed + i)))
                rand.append(pipe.decode(noise, generator=torch.Generator().manual_seed(args.seed + i)))
        real, decoded, rand = torch.cat(real), torch.cat(decoded), torch.cat(rand)
        if args.grid:
            from vistok.image_files import save_grid

            save_grid(torch.cat([real[:8], decoded[:8], rand[:8]]), args.grid, nrow=8)
        return {"decoded_match": scene_match(detector, decoded, scenes),
                "random_codes_floor": scene_match(detector, rand, scenes),
                "real_scenes_ceiling": scene_match(detector, real, scenes), "num_scenes": n,
                "protocol": "held-out ShapesWorld scenes; a decoded image matches when the exact detector's objects "
                            "(colour, shape, count) equal the scene's; random codes: uniform over the codebook"}
