#!/usr/bin/env python
"""Train the FD-LeNet classifier on the MNIST training split and save it to checkpoints/fd_lenet.

    python scripts/train_lenet.py [--out checkpoints/fd_lenet] [--epochs 20]

Deterministic (seeded). Augmentation: random shifts of up to 2 px. Prints the held-out accuracy and
writes it to results/fd_lenet.json (last line: the JSON object).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.cli import add_debug, run  # noqa: E402
from vistok.data.mnist import MNIST  # noqa: E402
from vistok.io import atomic_write_json, guard_output_dir, write_release_dir  # noqa: E402
from vistok.classifiers.lenet import LeNet  # noqa: E402
from vistok.evaluation.lenet import class_accuracy, fd_lenet


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image independently by up to ``max_shift`` pixels (zero fill = background)."""
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=g).tolist()
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="checkpoints/fd_lenet")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="results/fd_lenet.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing release at --out (atomically)")
    add_debug(p)
    args = p.parse_args(argv)
    guard_output_dir(args.out, "--out", args.overwrite)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, test = MNIST("train"), MNIST("test")
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * (len(train) // 64))
    t0 = time.time()
    for _ in range(args.epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train) - 63, 64):
            idx = perm[i:i + 64]
            x = shift(train.images[idx], g)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    acc = class_accuracy(model, test.images, test.labels)
    # reference points of the metric's scale (500 vs the 500 held-out digits)
    floor = fd_lenet(model, train.images[torch.randperm(len(train), generator=g)[:500]], test.images)
    blur = fd_lenet(model, _blur(test.images), test.images)
    noise = fd_lenet(model, torch.rand_like(test.images) * 2 - 1, test.images)
    write_release_dir(args.out, model.save_pretrained, args.overwrite)
    result = {"heldout_accuracy": acc, "fd_floor_500_train_vs_heldout": floor, "fd_blur_sigma1": blur,
              "fd_uniform_noise": noise, "epochs": args.epochs, "seconds": round(time.time() - t0, 1),
              "weights": args.out}
    atomic_write_json(args.results, result)
    print(json.dumps(result))
    return 0


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=7, sigma=sigma)


if __name__ == "__main__":
    sys.exit(run(main))
