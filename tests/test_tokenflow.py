"""TokenFlow: trains (loss falls) with a frozen teacher that is never part of its weights; the release
round trip; the pixel-only ablation variant; clear errors for a missing teacher or mismatched grids."""
import os

import pytest
import torch

from vistok.config import load_config
from vistok.tokenizers.semantic_teacher import ContrastiveViT, random_affine
from vistok.tokenizers.tokenflow import TokenFlow
from tests.conftest import ROOT, trained_vs_fresh

TINY = ["model.ch=8", "model.z_channels=16", "model.sem_dim=32", "model.sem_depth=1", "model.sem_heads=2",
        "model.teacher_dim=32", "model.codebook_size=64", "train.batch_size=16", "data.limit=64",
        "train.log_with=none", "train.progress=false", "train.image_every=0", "train.eval_every=0",
        "train.mixed_precision=no", "train.warmup_steps=2", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "t"
    ContrastiveViT(image_size=32, in_channels=1, patch=4, dim=32, depth=1, heads=2).save_pretrained(str(path))
    return str(path)


@pytest.mark.slow
def test_tokenflow_trains_with_frozen_teacher_outside_its_weights(teacher_dir, tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/tokenflow/mnist.yaml"),
                      TINY + [f"model.teacher={teacher_dir}", "train.max_steps=30", "train.checkpoint_every=30",
                              f"train.output_dir={tmp_path / 'run'}"])
    from vistok.data.mnist import MNIST

    batch = {"image": MNIST("train", limit=64).images}
    before, after, model = trained_vs_fresh(cfg, batch)
    assert float(after["rec"]) < 0.5 * float(before["rec"])
    assert float(after["semantic"]) < float(before["semantic"])
    model.eval()
    x = batch["image"][:4]
    codes = model.encode(x)
    assert codes.shape == (4, 85) and int(codes.max()) < 64
    assert torch.allclose(model.decode(codes), model.reconstruct(x)[0], atol=1e-5)


def test_pixel_only_ablation_variant_has_the_same_code_budget():
    kw = dict(image_size=32, in_channels=1, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=16, attn_mid=False,
              sem_patch=4, sem_dim=32, sem_depth=1, sem_heads=2, teacher_dim=32, codebook_size=64, scales=[1, 2, 4, 8])
    dual, pix = TokenFlow(**kw), TokenFlow(semantic=False, **kw)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert dual.eval().encode(x).shape == pix.eval().encode(x).shape == (2, 85)
    assert not hasattr(pix, "semantic_encoder") and float(pix({"image": x})["loss"]) > 0


def test_clear_errors():
    with pytest.raises(ValueError, match="last scale .* must equal the encoder grid 8"):
        TokenFlow(image_size=32, ch_mult=[1, 2, 2], sem_patch=4, scales=[1, 2, 4])
    with pytest.raises(ValueError, match="semantic grid 4 .* != pixel grid 8"):
        TokenFlow(image_size=32, ch_mult=[1, 2, 2], sem_patch=8, scales=[1, 2, 4, 8])
    m = TokenFlow(image_size=32, in_channels=1, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=16,
                  sem_patch=4, sem_dim=32, sem_depth=1, sem_heads=2, teacher_dim=32, codebook_size=64,
                  scales=[1, 2, 4, 8], teacher="")
    with pytest.raises(ValueError, match="needs a teacher"):
        m({"image": torch.zeros(2, 1, 32, 32)})


def test_teacher_contrastive_loss_falls_and_augmentation_keeps_background():
    torch.manual_seed(0)
    from vistok.data.mnist import MNIST

    x = MNIST("train", limit=64).images
    aug = random_affine(x)
    assert aug.shape == x.shape and float(aug[:, :, 0, 0].mean()) < -0.9  # corners stay background
    t = ContrastiveViT(image_size=32, in_channels=1, patch=4, dim=32, depth=1, heads=2)
    opt = torch.optim.AdamW(t.parameters(), 3e-3)
    losses = []
    for _ in range(30):
        loss = t({"image": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
