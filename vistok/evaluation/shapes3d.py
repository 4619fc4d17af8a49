"""`evaluate.py shape`: a VAT release on held-out 3-D shapes at several code budgets, and generated shapes.

Reconstruction (a ``shape-reconstruction`` release, or the tokenizer of a ``class-to-shape`` one): for every
budget k (the same model decoded from its first k scales) the mean over the first ``--num-shapes`` held-out
shapes of F-score at 0.01 and 0.02 and Chamfer-L1 (``--surface-samples`` points on the marching-cubes mesh at
``--resolution`` vs as many on the reference surface, distances in the [-1, 1] cube), volumetric IoU on
``--iou-points`` uniform points (the decoder's occupancy vs the exact one), the bytes of the codes (tokens of
the k scales x ceil(log2 K) / 8) and the compression ratio against the reference mesh as binary PLY (float32
vertices, int32 faces).

Generation (``--generate``, a ``class-to-shape`` release): ``--per-class`` shapes of every class; MMD and coverage
(Chamfer-L1) against as many held-out shapes, connected components per mesh, empty meshes, and the share a
geometric classifier (``vistok.classifiers.shape_type``) recognises as the requested primitive type.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from vistok.data.base import build_dataset
from vistok.data.shapes3d import PRIMITIVES
from vistok.evaluation.task import Task
from vistok.meshes import connected_components, is_empty, ply_bytes, sample_surface
from vistok.metrics.shapes3d import mmd_coverage, surface_metrics, volume_iou
from vistok.registry import register_task


def _surface(mesh, n: int, seed: int) -> np.ndarray:
    return np.zeros((0, 3), np.float32) if is_empty(mesh) else sample_surface(mesh, n, seed=seed)[0]


@torch.no_grad()
def evaluate_budgets(tok, data, num_shapes: int, budgets: list[int], resolution: int = 64, surface_samples: int = 20000,
                     iou_points: int = 20000) -> dict:
    n = min(num_shapes, len(data))
    rng = np.random.default_rng(0)
    refs = [data.mesh(i) for i in range(n)]
    ref_pts = [_surface(m, surface_samples, 1000 + i) for i, m in enumerate(refs)]
    uniform = rng.uniform(-1, 1, (iou_points, 3)).astype(np.float32)
    gt_occ = [data.occupancy_at(i, uniform) for i in range(n)]
    source = float(np.mean([ply_bytes(m) for m in refs]))
    device = next(tok.parameters()).device
    points = torch.stack([data[i]["points"] for i in range(n)]).to(device)
    codes = tok.encode(points)
    out = {}
    for k in budgets:
        rows = []
        for i in range(n):
            z_hat = tok.decode_latent(codes[i:i + 1], k)
            mesh = tok.meshes(tok.occupancy_grid(z_hat, resolution))[0]
            logits = tok.occupancy_logits(tok.triplane(z_hat), torch.from_numpy(uniform)[None].to(device))[0]
            row = surface_metrics(_surface(mesh, surface_samples, i), ref_pts[i])
            row["iou"] = volume_iou((logits > 0).cpu().numpy(), gt_occ[i])
            rows.append(row)
        size = tok.bytes_per_shape(k)
        out[f"scales_{k}"] = {**{m: float(np.mean([r[m] for r in rows])) for m in rows[0]},
                              "tokens": sum(tok.scales[:k]), "bytes": size, "compression_ratio": source / size}
    return {"budgets": out, "num_shapes": n, "source_ply_bytes": source}


@torch.no_grad()
def evaluate_generation(pipe, data, per_class: int, surface_samples: int = 2048, seed: int = 0, **options) -> dict:
    k = pipe.generator.num_classes
    labels = [c for c in range(k) for _ in range(per_class)]
    meshes = []
    for i in range(0, len(labels), 32):
        meshes += pipe(labels[i:i + 32], seed=seed + i, **options)
    gen = [_surface(m, surface_samples, i) for i, m in enumerate(meshes)]
    refs = [_surface(data.mesh(i), surface_samples, 1000 + i) for i in range(min(len(data), len(labels)))]
    result = mmd_coverage(gen, refs)
    comps = [connected_components(m) for m in meshes]
    result.update({"components_mean": float(np.mean(comps)), "single_component": float(np.mean([c == 1 for c in comps])),
                   "empty": float(np.mean([is_empty(m) for m in meshes])), "labels": labels})
    if list(getattr(data, "class_names", []))[: len(PRIMITIVES)] == list(PRIMITIVES):  # single-primitive classes
        from vistok.classifiers.shape_type import ShapeTypeClassifier

        single = [i for i, c in enumerate(labels) if c < len(PRIMITIVES)]
        pred = ShapeTypeClassifier.fit_procedural().predict([meshes[i] for i in single])
        result["recognised_as_requested"] = float(np.mean([p == labels[i] for p, i in zip(pred, single)]))
    return result, meshes


@register_task("shape")
class ShapeTask(Task):
    help = "3-D tokenizer metrics at several code budgets (F-score, Chamfer, IoU, bytes), or generated shapes"

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--pipeline", required=True)
        p.add_argument("--num-shapes", type=ranged(int, 1), default=32, help="the first N held-out shapes")
        p.add_argument("--num-scales", type=ranged(int, 1), nargs="+", help="budgets: decode from the first K scales "
                       "(default: every prefix)")
        p.add_argument("--resolution", type=ranged(int, 8), default=64, help="marching-cubes grid per axis")
        p.add_argument("--surface-samples", type=ranged(int, 100), default=20000)
        p.add_argument("--iou-points", type=ranged(int, 100), default=20000)
        p.add_argument("--generate", action="store_true", help="evaluate generated shapes (a class-to-shape release)")
        p.add_argument("--per-class", type=ranged(int, 1), default=8)
        p.add_argument("--cfg-scale", type=float, default=1.0)

    @classmethod
    def run(cls, args) -> dict:
        from vistok.pipelines.base import Pipeline

        t0 = time.time()
        pipe = Pipeline.from_pretrained(args.pipeline)
        data = build_dataset(pipe.data, "test")
        tok = pipe.tokenizer.eval()
        if args.generate:
            if pipe.generator is None:
                raise ValueError(f"--generate: {args.pipeline} has no generator (a class-to-shape release is needed)")
            result, _ = evaluate_generation(pipe.to("cpu"), data, args.per_class, cfg_scale=args.cfg_scale)
            result["protocol"] = (f"{args.per_class} generated shapes per class vs {result['num_reference']} held-out "
                                  f"shapes; MMD / coverage on Chamfer-L1 of 2048 surface samples each")
        else:
            if tok.codebook_size is None:
                raise ValueError(f"{args.pipeline}: a stage-1 (continuous) VAT has no code budgets; release stage 2")
            budgets = args.num_scales or list(range(1, len(tok.scales) + 1))
            bad = [k for k in budgets if k > len(tok.scales)]
            if bad:
                raise ValueError(f"--num-scales {bad}: the tokenizer has {len(tok.scales)} scales {tok.scales}")
            result = evaluate_budgets(tok, data, args.num_shapes, budgets, args.resolution, args.surface_samples,
                                      args.iou_points)
            result["protocol"] = (f"held-out {pipe.data['type']}; F-score at 0.01/0.02 and Chamfer-L1 (0.5 x (accuracy + "
                                  f"completeness)) on {args.surface_samples} surface samples, marching cubes at "
                                  f"{args.resolution}^3; IoU on {args.iou_points} uniform points; bytes = tokens x "
                                  f"ceil(log2 K) / 8 vs the reference mesh as binary PLY")
        result["seconds"] = round(time.time() - t0, 2)
        return result
