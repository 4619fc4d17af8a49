"""Shared by the xAR MNIST benchmarks (xar_ablation.py, xar_entities.py): train configs/xar/mnist.yaml with
overrides, then sample 50 digits per class and score them with the committed LeNet (class accuracy, FD-LeNet
vs the 500 held-out digits). Run alone, it scores one configuration:

    python benchmarks/xar_mnist.py [--steps 300] [model.entity=subsample model.stride=2 ...]

Last line: {"acc", "fd_lenet", "images_per_s", "train_seconds"}.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import load_config  # noqa: E402
from vistok.data.mnist import MNIST  # noqa: E402
from vistok.evaluation.lenet import class_accuracy, fd_lenet, load_lenet  # noqa: E402
from vistok.pipelines.base import Pipeline  # noqa: E402
from vistok.loading import model_from_run
from vistok.training.trainer import train  # noqa: E402


def train_and_score(name: str, overrides: list[str], tokenizer: str, steps: int, seed: int, tmp: str,
                    cfg_scale: float = 5.0, flow_steps: int = 10, per_class: int = 50) -> dict:
    out = os.path.join(tmp, f"{name}-{seed}")
    start = time.perf_counter()
    train(load_config("configs/xar/mnist.yaml", [
        f"data.tokenizer={tokenizer}", *overrides, f"train.max_steps={steps}", f"train.seed={seed}",
        "train.progress=false", "train.image_every=0", "train.eval_every=0", "train.log_with=none",
        f"train.checkpoint_every={steps}", f"train.output_dir={out}"]))
    train_seconds = time.perf_counter() - start
    gen, _, _ = model_from_run(out)
    tok = Pipeline.from_pretrained(tokenizer).tokenizer
    labels = torch.arange(10).repeat_interleave(per_class)
    latents, sample_seconds = [], 0.0
    with torch.no_grad():
        for i in range(0, len(labels), 100):
            t0 = time.perf_counter()
            latents.append(gen.sample(labels[i:i + 100], cfg_scale=cfg_scale, steps=flow_steps,
                                      generator=torch.Generator().manual_seed(i)))
            sample_seconds += time.perf_counter() - t0
        images = torch.cat([tok.decode(z).clamp(-1, 1) for z in latents])
    lenet = load_lenet("checkpoints/fd_lenet")
    return {"acc": class_accuracy(lenet, images, labels), "fd_lenet": fd_lenet(lenet, images, MNIST("test").images),
            "images_per_s": round(len(labels) / sample_seconds, 2), "train_seconds": round(train_seconds, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="checkpoints/demo-xar-kl")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.entity=token")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(train_and_score("run", args.overrides, args.tokenizer, args.steps, args.seed, tmp)))


if __name__ == "__main__":
    main()
