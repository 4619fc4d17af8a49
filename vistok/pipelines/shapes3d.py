"""The 3-D shape pipelines: ``shape-reconstruction`` (a VAT tokenizer alone: held-out shapes through the codes)
and ``class-to-shape`` (a next-scale generator over its codes, class-conditional on the shape type). Sampling
writes one mesh per shape through the ``obj`` / ``ply`` writers and a PNG grid of renders (``grid.png``)."""
from __future__ import annotations

import os

import numpy as np
import torch

from vistok.cli import ranged
from vistok.image_files import save_grid
from vistok.pipelines.base import Pipeline
from vistok.pipelines.writers import Writer
from vistok.registry import register_pipeline, register_writer


def render_grid(meshes: list, path: str, nrow: int = 8, size: int = 96) -> None:
    from vistok.meshes import render_mesh

    images = torch.from_numpy(np.stack([render_mesh(m, size) for m in meshes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_grid(images, path, nrow=nrow)


class ShapePipeline(Pipeline):
    writers = ("obj",)
    data_from = "tokenizer"

    def decode_options(self, options: dict) -> dict:
        return self.options_by_component(options)[0].get("tokenizer", {})


@register_pipeline("shape-reconstruction")
class ShapeReconstructionPipeline(ShapePipeline):
    requires = {"tokenizer": "tokenizer"}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--num-shapes", type=ranged(int, 1), default=16, help="the first N held-out shapes")

    @torch.no_grad()
    def reconstruct(self, points: torch.Tensor, **options) -> list:
        """Surface points B,P,6 -> meshes through the codes; ``options``: the tokenizer's decoding options."""
        return self.tokenizer.meshes(self.tokenizer.reconstruct(points.to(self.device), **options)[0])

    def sample(self, args, options: dict, out: str, state) -> dict:
        from vistok.data.base import build_dataset

        data = build_dataset(self.data, "test")
        n = min(args.num_shapes, len(data))
        if not state.is_main_process:
            return {"mode": "reconstruct", "num_shapes": n}
        decoding = self.decode_options(options)
        meshes = []
        for i in range(0, n, args.batch_size):
            pts = torch.stack([data[j]["points"] for j in range(i, min(n, i + args.batch_size))])
            meshes += self.reconstruct(pts, **decoding)
        for i, m in enumerate(meshes):
            for w in args.writers:
                w.write(i, m)
        for w in args.writers:
            w.finish(n)
        render_grid(meshes, os.path.join(out, "grid.png"))
        return {"mode": "reconstruct", "num_shapes": n, "split": "test", "data": self.data, **decoding}


@register_pipeline("class-to-shape")
class ClassToShapePipeline(ShapePipeline):
    requires = {"tokenizer": "tokenizer", "generator": "generator"}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--per-class", type=ranged(int, 1), default=4, help="shapes of every class")
        parser.add_argument("--class-labels", type=ranged(int, 0), nargs="+", help="exactly these labels")

    @torch.no_grad()
    def __call__(self, class_labels, seed: int | None = None, **options) -> list:
        """Class labels -> meshes; ``options``: the generator's sampling options and the tokenizer's decoding ones."""
        by = self.options_by_component(options)[0]
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        codes = self.generator.sample(labels, generator=self.generator_seed(seed), **by.get("generator", {}))
        return self.tokenizer.meshes(self.tokenizer.decode(codes, **by.get("tokenizer", {})))

    def sample(self, args, options: dict, out: str, state) -> dict:
        k = self.generator.num_classes
        labels = args.class_labels or [c for c in range(k) for _ in range(args.per_class)]
        bad = [c for c in labels if not 0 <= c < k]
        if bad:
            raise ValueError(f"--class-labels {bad[:5]} out of range: this generator has classes 0..{k - 1}")
        meshes = [None] * len(labels)
        for bi, i in enumerate(range(0, len(labels), args.batch_size)):
            if bi % state.num_processes == state.process_index:
                for j, m in enumerate(self(labels[i:i + args.batch_size], seed=args.seed + bi, **options)):
                    meshes[i + j] = m
                    for w in args.writers:
                        w.write(i + j, m)
        state.wait_for_everyone()
        if state.is_main_process:
            for w in args.writers:
                w.finish(len(labels))
            if all(m is not None for m in meshes):  # one process, or the main rank's share only
                render_grid(meshes, os.path.join(out, "grid.png"), nrow=max(1, min(8, labels.count(labels[0]))))
        return {"mode": "generate", "num_shapes": len(labels), "labels": labels, "batch_size": args.batch_size,
                "num_processes": state.num_processes, **options}


class MeshWriter(Writer):
    """``<index:05d>.<ext>`` per mesh (3-D pipelines), written atomically."""

    ext = "obj"

    def write(self, index: int, mesh) -> None:
        from vistok.meshes import write_mesh

        os.makedirs(self.out, exist_ok=True)
        write_mesh(mesh, os.path.join(self.out, f"{index:05d}.{self.ext}"))


@register_writer("obj")
class ObjWriter(MeshWriter):
    ext = "obj"


@register_writer("ply")
class PlyWriter(MeshWriter):
    ext = "ply"
