"""SEED-LLaMA's two directions as pipeline types over one release (tokenizer + decoder + a ``seed_llama``
generator):

    seed-text-to-image:  prompt --generator.sample_codes--> codes B,Q --tokenizer.generation_embedding-->
                         --decoder.generate--> images            (GenEval layout for a prompt file, as text-to-image)
    seed-image-to-text:  images --tokenizer.encode--> codes --generator.sample_captions--> captions.jsonl

The release's pipeline.json names the first (the generator drives it); ``sample.py --pipeline-type
seed-image-to-text`` samples the same release the other way (the decoder is then not needed). Captions of
held-out scenes carry ``item`` (the scene's index in the tokenizer's test split), so ``evaluate.py captions``
scores them against the scenes' metadata.
"""
from __future__ import annotations

import os

import torch

from vistok.cli import ranged
from vistok.image_files import save_grid
from vistok.pipelines.base import Pipeline
from vistok.pipelines.images import TextToImagePipeline
from vistok.pipelines.seed import SeedPipeline
from vistok.registry import register_pipeline


@register_pipeline("seed-text-to-image")
class SeedTextToImagePipeline(TextToImagePipeline):
    requires = {"tokenizer": "tokenizer", "decoder": "decoder", "generator": "generator"}
    optional = {"sr": "sr"}

    decode = SeedPipeline.decode  # codes -> generation embedding -> the decoder's images
    _check_codes = SeedPipeline._check_codes

    @torch.no_grad()
    def generate_codes(self, class_labels=None, prompts=None, seed: int | None = None, **options) -> torch.Tensor:
        if prompts is None:
            raise ValueError("a seed-text-to-image pipeline draws images from prompts: pass prompts=[...]")
        return self.generator.sample_codes(list(prompts), generator=self.generator_seed(seed), **options)

    @torch.no_grad()
    def __call__(self, class_labels=None, prompts=None, seed: int | None = None, **options) -> torch.Tensor:
        """Prompts -> images B,C,H,W in [-1, 1]; ``options``: the generator's and the decoder's sampling
        options. Same seed, same images."""
        split = self.split_options(options)
        codes = self.generate_codes(prompts=prompts, seed=seed, **split["generator"])
        return self.decode(codes, seed=seed, **split.get("decoder", {})).clamp(-1, 1)


@register_pipeline("seed-image-to-text")
class SeedImageToTextPipeline(Pipeline):
    requires = {"tokenizer": "tokenizer", "generator": "generator"}
    optional = {"decoder": "decoder"}
    writers = ("captions",)
    data_from = "tokenizer"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, seed: int | None = None, **options) -> list[str]:
        """Images B,C,H,W in [-1, 1] -> captions; ``options``: the generator's (temperature 0: greedy)."""
        codes = self.tokenizer.encode(images.to(self.device))
        opts = self.options_by_component(options)[0]["generator"]
        return self.generator.sample_captions(codes, generator=self.generator_seed(seed), **opts)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--num-images", type=ranged(int, 1), default=64,
                            help="caption the first N held-out images of the tokenizer's data")
        parser.add_argument("--images", help="caption the images of this folder instead (resized to the "
                                             "tokenizer's data image_size)")

    def _inputs(self, args):
        if args.images:
            names, images = read_folder(args.images, int((self.data or {}).get("image_size", 0)))
            return images, [{"image": n} for n in names], {"images": os.path.abspath(args.images)}
        from vistok.data.base import build_dataset

        data = build_dataset(self.data, "test")
        n = min(args.num_images, len(data))
        images = torch.stack([data[j]["image"] for j in range(n)])
        return images, [{"item": j} for j in range(n)], {"split": "test", "data": self.data}

    def sample(self, args, options: dict, out: str, state) -> dict:
        images, extra, source = self._inputs(args)
        n = len(images)
        for bi, i in enumerate(range(0, n, args.batch_size)):
            if bi % state.num_processes != state.process_index:
                continue
            captions = self(images[i:i + args.batch_size], seed=args.seed + bi, **options)
            for k, caption in enumerate(captions):
                for w in args.writers:
                    w.write(i + k, (caption, extra[i + k]))
        state.wait_for_everyone()
        if state.is_main_process:
            for w in args.writers:
                w.finish(n)
            save_grid(images[:64], os.path.join(out, "grid.png"), nrow=8)
        return {"mode": "caption", **source, "num_images": n, "batch_size": args.batch_size,
                "num_processes": state.num_processes, **options}


def read_folder(folder: str, size: int) -> tuple[list[str], torch.Tensor]:
    """The images of ``folder`` (sorted by name) as RGB B,3,size,size in [-1, 1]."""
    import numpy as np
    from PIL import Image

    from vistok.data.images import IMAGE_EXTENSIONS

    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder}: not a folder of images")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"--images {folder}: no images (expected files ending in {IMAGE_EXTENSIONS})")
    out = []
    for name in names:
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        if size and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return names, torch.stack(out)
