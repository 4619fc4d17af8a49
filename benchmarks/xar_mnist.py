"""Shared by the xAR MNIST benchmarks: train configs/xar/mnist.yaml with overrides, then sample 50 digits per
class and score them with the committed LeNet (class accuracy, FD-LeNet vs the 500 held-out digits)."""
import os
import time

import torch

from vistok.config import load_config
from vistok.data.mnist import MNIST
from vistok.evaluation.lenet import class_accuracy, fd_lenet, load_lenet
from vistok.pipeline import Pipeline, model_from_run
from vistok.training.trainer import train


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
