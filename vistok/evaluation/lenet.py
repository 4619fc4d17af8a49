"""FD-LeNet: the embedded data's stand-in for FID.

No Inception weights exist offline, so the distribution metric of the demo is the Frechet distance in
the penultimate (84-d) feature space of a small LeNet trained on the MNIST training split
(``scripts/train_lenet.py``; weights committed under ``checkpoints/fd_lenet``). Its scale belongs to
this classifier: compare figures at equal sample counts and against the real-vs-real floor.
"""
from __future__ import annotations

import torch

from vistok.classifiers.lenet import LeNet
from vistok.evaluation.task import Task
from vistok.registry import register_task


def load_lenet(path: str) -> LeNet:
    import os

    if not os.path.isdir(path):
        raise FileNotFoundError(f"FD-LeNet classifier '{path}' does not exist (eval.lenet); "
                                f"it ships in checkpoints/fd_lenet, or run scripts/train_lenet.py")
    return LeNet.from_pretrained(path).eval()


def fd_lenet(lenet: LeNet, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Frechet distance between two image sets (model range [-1, 1]) in LeNet feature space."""
    from vistok.metrics.fid import StreamingStats, frechet_distance

    stats = []
    for imgs in (images_a, images_b):
        s = StreamingStats()
        s.update(lenet.features_and_logits(imgs)[0])
        stats.append(s.mu_sigma())
    return frechet_distance(*stats[0], *stats[1])


def class_accuracy(lenet: LeNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits = torch.from_numpy(lenet.features_and_logits(images)[1])
    return float((logits.argmax(1) == labels.long()).double().mean())


def evaluate_digit_samples(samples_dir: str, lenet_path: str, labels: list[int] | None = None, seed: int = 0) -> dict:
    """FD-LeNet of a folder of digit images vs the 500 held-out MNIST digits, the real-vs-real floor at the
    same count, and (for class-conditional samples) the share the classifier reads as the requested class."""
    from vistok.data.mnist import MNIST
    from vistok.evaluation.fid import list_images, read_uint8

    files = list_images(samples_dir)
    imgs = read_uint8(files).float().mean(1, keepdim=True) / 127.5 - 1
    lenet = load_lenet(lenet_path)
    heldout, train = MNIST("test"), MNIST("train")
    g = torch.Generator().manual_seed(seed)
    real = train.images[torch.randperm(len(train), generator=g)[: min(len(imgs), len(train))]]
    out = {"num_samples": len(imgs), "fd_lenet": fd_lenet(lenet, imgs, heldout.images),
           "fd_lenet_floor": fd_lenet(lenet, real, heldout.images),
           "protocol": f"FD-LeNet vs the {len(heldout)} held-out MNIST digits; floor = {len(real)} real training digits vs the same"}
    if labels is not None:
        if len(labels) != len(imgs):
            raise ValueError(f"{samples_dir}: {len(labels)} labels for {len(imgs)} images")
        out["class_accuracy"] = class_accuracy(lenet, imgs, torch.tensor(labels))
    return out


@register_task("classify")
class ClassifyTask(Task):
    help = "FD-LeNet vs held-out digits, the real-vs-real floor, class accuracy"

    @classmethod
    def add_arguments(cls, p) -> None:
        p.add_argument("--samples", required=True)
        p.add_argument("--labels-from", help="sampling.json with a 'labels' list (default: SAMPLES/sampling.json when present)")
        p.add_argument("--lenet", default="checkpoints/fd_lenet")

    @classmethod
    def score_generator(cls, model, decode, num_samples: int, seed: int, cfg) -> dict:
        """During training: class accuracy and FD-LeNet (vs the held-out digits) of ``num_samples`` images, the
        classes in turn."""
        from vistok.data.mnist import MNIST
        from vistok.evaluation.during_training import sample_in_batches

        labels = [i % model.num_classes for i in range(num_samples)]
        codes = sample_in_batches(model, labels, seed, cfg.train.gen_eval)
        images = decode(codes).float().cpu().clamp(-1, 1)
        images = images.mean(1, keepdim=True) if images.shape[1] != 1 else images
        lenet = load_lenet(cfg.eval.lenet)  # eval.lenet: the FD-LeNet release
        return {"class_accuracy": class_accuracy(lenet, images, torch.tensor(labels)),
                "fd_lenet": fd_lenet(lenet, images, MNIST("test").images)}

    @classmethod
    def run(cls, args) -> dict:
        import json
        import os

        labels_file = args.labels_from or os.path.join(args.samples, "sampling.json")
        labels = None
        if os.path.isfile(labels_file):
            with open(labels_file, encoding="utf-8") as fh:
                labels = json.load(fh).get("labels")
        return evaluate_digit_samples(args.samples, args.lenet, labels)

