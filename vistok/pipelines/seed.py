"""SEED's codes <-> images pipeline (``pipeline_type: seed``): a tokenizer that turns images into 1-D causal codes
and predicts a generation embedding from codes, and a decoder that draws an image from that embedding.

    images --tokenizer.encode--> codes B,Q --tokenizer.generation_embedding--> B,E --decoder.generate--> images

Decoded images are SEED's "semantic" reconstructions: the decoder samples an image with the embedding's content,
not the input's pixels. ``sample.py`` reconstructs the first ``--num-images`` held-out images of the tokenizer's
data (grid: inputs above outputs), or decodes the codes of a ``--codes`` file (.npy, B x Q integers). Item b (a
batch of ``--batch-size``) uses seed + b and goes to rank b % world, as everywhere.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from vistok.cli import ranged
from vistok.image_files import read_images, save_grid
from vistok.pipelines.images import ImagePipeline
from vistok.registry import register_pipeline


@register_pipeline("seed")
class SeedPipeline(ImagePipeline):
    requires = {"tokenizer": "tokenizer", "decoder": "decoder"}
    optional = {"sr": "sr"}
    data_from = "tokenizer"

    # ---- Python API --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images B,C,H,W in [-1, 1] -> codes B,Q (longs)."""
        return self.tokenizer.encode(images.to(self.device))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, generator: torch.Generator | None = None, seed: int | None = None,
               **options) -> torch.Tensor:
        """Codes B,Q -> images B,C,H,W in [-1, 1]; ``options``: the decoder's ``steps``, ``guidance_scale`` (0 or
        absent: its config's). ``seed`` (when no generator is given) makes the draw reproducible."""
        codes = self._check_codes(torch.as_tensor(codes, device=self.device))
        embeds = self.tokenizer.generation_embedding(codes)
        g = generator if generator is not None else self.generator_seed(seed)
        opts = self.split_options(options)["decoder"]
        hook = getattr(self.decoder, "decode_options", None)  # 0 in sample.py's flags: the decoder's own default
        return self.decoder.generate(embeds, generator=g, **(hook(**opts) if hook is not None else opts))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None, seed: int | None = None,
                    **options) -> torch.Tensor:
        return self.decode(self.encode(images), generator=generator, seed=seed, **options)

    def __call__(self, codes: torch.Tensor, seed: int | None = None, **options) -> torch.Tensor:
        return self.decode(codes, seed=seed, **options)

    def split_options(self, options: dict) -> dict:
        """{component: its options}; an option no component declares is an error (there is no generator)."""
        out, rest = self.options_by_component(options)
        rest = sorted(rest)
        if rest:
            raise ValueError(f"sampling options {rest} are not options of this pipeline's components "
                             f"({sorted(self.components)})")
        return out

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        q, k = getattr(self.tokenizer, "num_queries", None), getattr(self.tokenizer, "codebook_size", None)
        if codes.dim() != 2 or codes.dtype.is_floating_point or (q is not None and codes.shape[1] != q):
            raise ValueError(f"codes must be B x {q if q is not None else 'Q'} integers (the tokenizer's "
                             f"num_queries), got {tuple(codes.shape)} {codes.dtype}")
        if k is not None and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must be in 0..{k - 1} (the tokenizer's codebook_size), got "
                             f"{int(codes.min())}..{int(codes.max())}")
        return codes.long()

    # ---- sample.py ---------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--num-images", type=ranged(int, 1), default=64,
                            help="reconstruct the first N held-out images of the tokenizer's data")
        parser.add_argument("--codes", help="decode these codes instead: a .npy file of B x Q integers "
                                            "(e.g. np.save(path, pipe.encode(images).cpu().numpy()))")

    def sample(self, args, options: dict, out: str, state) -> dict:
        inputs = None
        if args.codes:
            codes = self._check_codes(torch.from_numpy(read_codes(args.codes)))
            n, source = len(codes), {"mode": "decode", "codes": os.path.abspath(args.codes)}
        else:
            from vistok.data.base import build_dataset

            data = build_dataset(self.data, "test")
            n = min(args.num_images, len(data))
            inputs = torch.stack([data[j]["image"] for j in range(n)])
            codes, source = None, {"mode": "reconstruct", "split": "test", "data": self.data}
        for bi, i in enumerate(range(0, n, args.batch_size)):
            if bi % state.num_processes != state.process_index:
                continue
            batch = codes[i:i + args.batch_size] if codes is not None else self.encode(inputs[i:i + args.batch_size])
            images = self.decode(batch, seed=args.seed + bi, **options).clamp(-1, 1)
            for w in args.writers:
                w.write(i, images)
            self._write_sr(images, i, out, options)
        state.wait_for_everyone()
        if state.is_main_process:
            for w in args.writers:
                w.finish(n)
            save_grid(_grid(read_images(out, min(n, 64)), inputs), os.path.join(out, "grid.png"), nrow=min(8, n))
        return {**source, "num_images": n, "batch_size": args.batch_size, "num_processes": state.num_processes,
                **options}


def read_codes(path: str) -> np.ndarray:
    """B x Q integer codes from a .npy file (no pickles)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--codes {path}: no such file (expected a .npy file of B x Q integer codes)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"--codes {path}: not a .npy array of integer codes ({e})") from e
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"--codes {path}: expected B x Q integers, got shape {arr.shape} of {arr.dtype}")
    return arr.astype(np.int64)


def _grid(decoded: torch.Tensor, inputs: torch.Tensor | None, ncol: int = 8) -> torch.Tensor:
    """Rows of inputs above their decoded images (or the decoded images alone)."""
    if inputs is None:
        return decoded
    x = inputs[:len(decoded)].to(decoded.dtype)
    if x.shape[1] != decoded.shape[1] or x.shape[-2:] != decoded.shape[-2:]:  # e.g. SD's 768 px from 32 px inputs
        x = torch.nn.functional.interpolate(x.expand(-1, decoded.shape[1], -1, -1) if x.shape[1] == 1 else x,
                                            size=decoded.shape[-2:], mode="nearest")
    return torch.cat([t for i in range(0, len(decoded), ncol) for t in (x[i:i + ncol], decoded[i:i + ncol])])
