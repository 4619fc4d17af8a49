"""The image pipelines: reconstruction (a tokenizer alone), class-to-image and text-to-image (a tokenizer and a
generator over its tokens), super-resolution (an SR model alone), each with an optional ``sr`` cascade stage
where it makes sense. Sampling is reproducible and spread over processes the same way everywhere: item b
(a batch of ``--batch-size`` images, or one prompt) uses seed + b and goes to rank b % world."""
from __future__ import annotations

import os

import numpy as np
import torch

from vistok.cli import ranged
from vistok.pipelines.base import Pipeline
from vistok.registry import register_pipeline
from vistok.image_files import class_grid, read_images, save_images
from vistok.image_files import save_grid


def _upscale(sr, images: torch.Tensor, tile: int = 0, tile_overlap: int = 16) -> torch.Tensor:
    """An SR stage on images B,C,H,W in [-1, 1] -> B,C,sH,sW in [-1, 1]. The SR model works in [0, 1] (BasicSR's
    range); grey images go through an RGB model as three equal channels and come back grey."""
    x = ((images + 1) / 2).clamp(0, 1)
    c, want = x.shape[1], sr.in_channels
    if c == 1 and want == 3:
        x = x.expand(-1, 3, -1, -1)
    out = sr.upscale_image(x.to(next(sr.parameters()).device), tile=tile, tile_overlap=tile_overlap).clamp(0, 1)
    if c == 1 and want == 3:
        out = out.mean(1, keepdim=True)
    return out * 2 - 1


class ImagePipeline(Pipeline):
    """A tokenizer's images: decoding codes, reconstructing images, the optional SR cascade."""

    data_from = "tokenizer"

    def split_options(self, options: dict) -> dict:
        """{component name: the options its SamplingOptions declares}; options no component declares go to the
        generator (a plug-in generator may take keywords without declaring them)."""
        out, rest = self.options_by_component(options)
        if rest and "generator" not in self.components:
            raise ValueError(f"sampling options {sorted(rest)} are not options of this pipeline's components")
        out["generator"] = {**out.get("generator", {}), **rest}
        return out

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, **options) -> torch.Tensor:
        """Images through the tokenizer; ``options``: its decoding options (its SamplingOptions, e.g. Layton's steps)."""
        return self.tokenizer.reconstruct(images, **options)[0].clamp(-1, 1)

    @torch.no_grad()
    def upscale(self, images: torch.Tensor, **options) -> torch.Tensor:
        if self.sr is None:
            raise ValueError("this pipeline has no sr component (release one with --stage sr=RUN)")
        return _upscale(self.sr, images, **options)

    def _write_sr(self, images, index, out, options) -> None:
        if self.sr is not None:  # the cascade: the upscaled images go to OUT/sr/ under the same names
            save_images(self.upscale(images, **self.split_options(options).get("sr", {})),
                        os.path.join(out, "sr"), start=index, grid_max=0)


@register_pipeline("reconstruction")
class ReconstructionPipeline(ImagePipeline):
    requires = {"tokenizer": "tokenizer"}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--num-images", type=ranged(int, 1), default=64, help="the first N held-out images")

    def sample(self, args, options: dict, out: str, state) -> dict:
        from vistok.data.base import build_dataset

        data = build_dataset(self.data, "test")
        n = min(args.num_images, len(data))
        if not state.is_main_process:  # small job: the main rank alone
            return {"mode": "reconstruct", "num_images": n}
        inputs, recons = [], []
        decoding = self.options_by_component(options)[0].get("tokenizer", {})
        for i in range(0, n, args.batch_size):
            x = torch.stack([data[j]["image"] for j in range(i, min(n, i + args.batch_size))])
            inputs.append(x)
            recons.append(self.reconstruct(x, **decoding))
        save_images(torch.cat(recons), out, grid_pairs=torch.cat(inputs))
        for w in args.writers:  # the PNGs are written above (with the input/output grid); e.g. npz reads them
            w.finish(n)
        return {"mode": "reconstruct", "num_images": n, "split": "test", "data": self.data, **decoding}


class GeneratorPipeline(ImagePipeline):
    requires = {"tokenizer": "tokenizer", "generator": "generator"}
    optional = {"sr": "sr"}

    @torch.no_grad()
    def generate_codes(self, class_labels=None, prompts=None, seed: int | None = None, **options) -> torch.Tensor:
        g = self.generator_seed(seed)
        if prompts is not None:
            return self.generator.sample(prompts=list(prompts), generator=g, **options)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        return self.generator.sample(labels, generator=g, **options)

    @torch.no_grad()
    def __call__(self, class_labels=None, prompts=None, seed: int | None = None, **options) -> torch.Tensor:
        """Class labels (or prompts) -> images B,C,H,W in [-1, 1]; ``options``: the generator's SamplingOptions
        (and the tokenizer's decoding options). Same seed, same images."""
        split = self.split_options(options)
        codes = self.generate_codes(class_labels, prompts, seed=seed, **split["generator"])
        return self.tokenizer.decode(codes, generator=self.generator_seed(seed), **split.get("tokenizer", {})).clamp(-1, 1)


@register_pipeline("class-to-image")
class ClassToImagePipeline(GeneratorPipeline):
    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--num-images", type=ranged(int, 1), default=64, help="images; class labels cycle 0..K-1")
        parser.add_argument("--per-class", type=ranged(int, 1), help="this many images of every class")
        parser.add_argument("--class-labels", type=ranged(int, 0), nargs="+", help="exactly these labels")

    def sample(self, args, options: dict, out: str, state) -> dict:
        k = self.generator.num_classes
        if args.class_labels:
            labels = args.class_labels
        elif args.per_class:
            labels = [c for c in range(k) for _ in range(args.per_class)]
        else:
            labels = [i % k for i in range(args.num_images)]
        bad = [c for c in labels if not 0 <= c < k]
        if bad:
            raise ValueError(f"--class-labels {bad[:5]} out of range: this generator has classes 0..{k - 1}")
        writers = args.writers
        for bi, i in enumerate(range(0, len(labels), args.batch_size)):
            if bi % state.num_processes == state.process_index:
                images = self(labels[i:i + args.batch_size], seed=args.seed + bi, **options)
                for w in writers:
                    w.write(i, images)
                self._write_sr(images, i, out, options)
        state.wait_for_everyone()
        if state.is_main_process:
            for w in writers:
                w.finish(len(labels))
            per_class = min(8, max(labels.count(c) for c in set(labels)))
            save_grid(class_grid(read_images(out, len(labels)), labels, per_class), os.path.join(out, "grid.png"), nrow=per_class)
            if self.sr is not None:
                save_grid(class_grid(read_images(os.path.join(out, "sr"), len(labels)), labels, per_class),
                          os.path.join(out, "sr", "grid.png"), nrow=per_class)
        return {"mode": "generate", "num_images": len(labels), "labels": labels, "batch_size": args.batch_size,
                **({"sr": {"dir": os.path.join(out, "sr"), "scale": self.sr.scale}} if self.sr is not None else {}),
                "num_processes": state.num_processes, **options}


@register_pipeline("text-to-image")
class TextToImagePipeline(GeneratorPipeline):
    writers = ("geneval",)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--prompts", required=True, help="GenEval metadata jsonl (one prompt per line)")
        parser.add_argument("--images-per-prompt", type=ranged(int, 1), default=4, help="GenEval uses 4")

    def sample(self, args, options: dict, out: str, state) -> dict:
        from PIL import Image

        from vistok.image_files import read_prompts

        prompts = read_prompts(args.prompts)
        for i, meta in enumerate(prompts):  # prompt i (seed + i) on rank i % world
            if i % state.num_processes == state.process_index:
                images = self(prompts=[meta["prompt"]] * args.images_per_prompt, seed=args.seed + i, **options)
                for w in args.writers:
                    w.write(i, (meta, images))
        state.wait_for_everyone()
        if state.is_main_process:
            for w in args.writers:
                w.finish(len(prompts))
            firsts = [np.asarray(Image.open(os.path.join(out, f"{i:05d}", "samples", "0000.png")))
                      for i in range(min(64, len(prompts)))]
            grid = torch.from_numpy(np.stack(firsts)).float() / 127.5 - 1
            save_grid(grid[:, None] if grid.dim() == 3 else grid.permute(0, 3, 1, 2), os.path.join(out, "grid.png"), nrow=8)
        return {"mode": "prompts", "prompts": os.path.abspath(args.prompts), "num_prompts": len(prompts),
                "images_per_prompt": args.images_per_prompt, "num_images": len(prompts) * args.images_per_prompt, **options}


@register_pipeline("super-resolution")
class SuperResolutionPipeline(ImagePipeline):
    requires = {"sr": "sr"}
    data_from = "sr"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--images", required=True, help="a folder of images to upscale (written under the same name, PNG)")

    def sample(self, args, options: dict, out: str, state) -> dict:
        from PIL import Image

        from vistok.data.images import IMAGE_EXTENSIONS
        from vistok.data.sr import read_image

        if not os.path.isdir(args.images):
            raise ValueError(f"--images {args.images}: not a folder of images")
        names = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"--images {args.images}: no images (expected files ending in {IMAGE_EXTENSIONS})")
        outs = [os.path.splitext(n)[0] + ".png" for n in names]
        if len(set(outs)) != len(outs):
            raise ValueError(f"--images {args.images}: two images share a name before the extension; nothing was written")
        os.makedirs(out, exist_ok=True)
        sr = self.sr.eval()
        opts = self.split_options(options)["sr"]
        with torch.no_grad():
            for name, target in zip(names, outs):
                up = sr.upscale_image(read_image(os.path.join(args.images, name))[None], **opts)
                arr = (up[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(os.path.join(out, target))
        tile = opts.get("tile", 0)
        return {"mode": "upscale", "num_images": len(names), "images": os.path.abspath(args.images), "scale": sr.scale,
                "files": outs, "inference": f"tiled {tile} px, overlap {opts.get('tile_overlap')}" if tile else "whole image"}
