"""Optimiser groups (which parameters get weight decay), LR schedules by name, the trainer's hooks (a loss module
with its own step, step-end updates, callbacks) and the README's optimiser table against the paper configs."""
import os

import pytest
import torch

from tests.conftest import ROOT, TINY_VQ
from vistok.config import ConfigError, load_config
from vistok.generators.ar import ARGenerator
from vistok.training.optim import build_optimizer, decay_split, param_groups

TINY_AR = dict(vocab_size=16, token_shape=[4, 4], num_classes=10, dim=32, depth=2, heads=2)


class _T:  # a train section
    optimizer, lr, betas, eps, weight_decay = "adamw", 0.1, (0.9, 0.95), 1e-8, 0.5


def test_decay_goes_to_matrices_only_and_not_to_what_the_model_lists():
    model = ARGenerator(**TINY_AR)
    decay, no_decay = decay_split(model)
    params = dict(model.named_parameters())
    assert decay and no_decay and set(decay) | set(no_decay) == set(params)
    assert all(params[n].ndim >= 2 for n in decay) and all(params[n].ndim < 2 for n in no_decay)
    assert any(n.endswith(".bias") or "norm" in n for n in no_decay)
    emb = next(n for n in decay if "emb" in n)  # LlamaGen/nanoGPT decay embeddings; a model may say otherwise
    model.no_weight_decay = lambda: [emb.rsplit(".", 1)[0]]
    assert emb in decay_split(model)[1] and emb not in decay_split(model)[0]


def test_adamw_step_shrinks_exactly_the_decayed_tensors():
    """With zero gradients AdamW's step is the decay alone: matrices shrink by lr * wd, 1-D tensors stay."""
    torch.manual_seed(0)
    model = ARGenerator(**TINY_AR)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, _T)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if before[n].ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


def test_a_model_may_give_its_own_groups_and_adam_is_available():
    lin = torch.nn.Linear(3, 3)
    lin.param_groups = lambda wd: [{"params": [lin.weight], "weight_decay": wd}, {"params": [], "weight_decay": 0.0}]
    groups = param_groups(lin, 0.5)
    assert len(groups) == 1 and groups[0]["params"][0] is lin.weight  # its own split; empty groups dropped

    class Adam(_T):
        optimizer = "adam"

    assert type(build_optimizer(lin, Adam)) is torch.optim.Adam


def test_schedules_are_looked_up_by_name_and_multistep_halves_at_milestones():
    from vistok.training.schedules import build_schedule

    cfg = load_config(os.path.join(ROOT, "configs/vqgan/mnist.yaml"), TINY_VQ + [
        "train.lr_schedule=multistep", "train.milestones=[3,5]", "train.gamma=0.5", "train.max_steps=6",
        "train.warmup_steps=0", "train.lr=1.0"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, lrs = build_schedule(opt, cfg.train), []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ConfigError, match="lr_schedule.*expected one of.*constant_cosine.*multistep"):
        load_config(os.path.join(ROOT, "configs/vqgan/mnist.yaml"), ["train.lr_schedule=warmup_cosine"])


def test_the_critic_keeps_the_patchgan_state_dict_keys():
    """Checkpoints written before the loss module existed (model_1.safetensors) still load into it."""
    from vistok.nn.discriminator import AdversarialLoss, PatchGAN

    a, b = AdversarialLoss(1, 8, 2, start=3, lr=2e-4), PatchGAN(1, 8, 2)
    assert a.state_dict().keys() == b.state_dict().keys()
    a.load_state_dict(b.state_dict())
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(a(x), b(x)) and not a.active(2) and a.active(3)
    assert a.own_loss({"_real": x, "_fake": x}, step=2) is None
    loss, logs = a.own_loss({"_real": x, "_fake": -x}, step=3)
    assert loss.requires_grad and float(logs["disc"]) == pytest.approx(float(loss.detach()))


def test_callbacks_run_in_eval_mode_and_their_metrics_are_logged(tmp_path):
    from vistok.training.trainer import train

    seen = []

    def callback(step, model, data, accelerator, last):
        seen.append((step, model.training, last))
        return {"gen/probe": float(step)} if last else None

    cfg = load_config(os.path.join(ROOT, "configs/vqgan/mnist.yaml"), TINY_VQ + [
        f"train.output_dir={tmp_path / 'run'}", "data.limit=32", "train.max_steps=3", "train.eval_every=0"])
    summary = train(cfg, callbacks=[callback])
    assert seen == [(1, False, False), (2, False, False), (3, False, True)]
    assert summary["metrics"]["gen/probe"] == 3.0


class _Oracle(torch.nn.Module):
    """A 'generator' whose codes are the requested classes (or, ``wrong``, the next class)."""

    def __init__(self, wrong: bool):
        super().__init__()
        self.w, self.wrong, self.num_classes = torch.nn.Parameter(torch.zeros(1)), wrong, 10

    def sample(self, labels, generator=None):
        return (labels + int(self.wrong)) % 10


def test_the_digit_metric_during_training_tells_right_from_wrong_classes():
    from omegaconf import OmegaConf

    from vistok.data.mnist import MNIST
    from vistok.evaluation.lenet import ClassifyTask

    test = MNIST("test")
    by_class = {c: test.images[test.labels == c][0] for c in range(10)}
    decode = lambda codes: torch.stack([by_class[int(c)] for c in codes])  # noqa: E731
    cfg = OmegaConf.create({"eval": {"lenet": os.path.join(ROOT, "checkpoints/fd_lenet")},
                            "train": {"gen_eval": {"batch_size": 16, "options": {}}}})
    right = ClassifyTask.score_generator(_Oracle(False), decode, 40, 0, cfg)
    wrong = ClassifyTask.score_generator(_Oracle(True), decode, 40, 0, cfg)
    assert right["class_accuracy"] >= 0.9 and wrong["class_accuracy"] <= 0.1
    assert right["fd_lenet"] == pytest.approx(wrong["fd_lenet"], rel=0.5)  # the same ten images either way


def test_gen_eval_names_a_task_that_can_score_a_generator():
    from vistok.evaluation.during_training import callbacks_for

    base = os.path.join(ROOT, "configs/ar/mnist.yaml")
    assert callbacks_for(load_config(base, ['train.gen_eval.task=""'])) == []
    with pytest.raises(ValueError, match="gen_eval.task 'recon' cannot score a generator"):
        callbacks_for(load_config(base, ["train.gen_eval.task=recon", "train.gen_eval.every=10"]))
    with pytest.raises(ValueError, match="unknown task type 'fidd'"):
        callbacks_for(load_config(base, ["train.gen_eval.task=fidd", "train.gen_eval.every=10"]))


def test_readme_optimiser_table_matches_the_paper_configs():
    from scripts.optimizer_table import table

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert table() in readme, "README's optimiser table is out of date: python scripts/optimizer_table.py"
