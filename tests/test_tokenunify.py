"""TokenUnify: patch tokens, the three objectives and their schedule, the procedural EM data and affinities,
VOI / ARAND on hand-made label pairs, and tiny pretrain -> fine-tune -> segment end to end."""
import math

import numpy as np
import pytest
import torch

from vistok.data.em import EMVolumes, affinities, voronoi_em
from vistok.metrics.segmentation import arand, segment, voi
from vistok.segmentation.tokenunify import TokenUnifyPretrain, TokenUnifySeg, patchify, unpatchify

TINY = dict(dim=16, depth=1, patch=[2, 4, 4], d_state=4)


def test_patchify_is_invertible_and_z_major():
    vol = torch.randn(2, 1, 4, 8, 8)
    tok = patchify(vol, (2, 4, 4))
    assert tok.shape == (2, 8, 32)
    assert torch.equal(tok[0, 4], vol[0, 0, 2:4, 0:4, 0:4].flatten())  # token 4 = second z plane, first (y, x)
    assert torch.equal(unpatchify(tok, (2, 4, 4), (1, 4, 8, 8)), vol)


def test_schedule_really_alternates_and_weights_switch_objectives():
    m = TokenUnifyPretrain(**TINY)
    assert [m.active(s) for s in range(3)] == [["random"], ["next", "next_all"], ["random"]]
    only_random = TokenUnifyPretrain(**TINY, weights={"random": 1.0, "next": 0.0, "next_all": 0.0})
    assert only_random.active(1) == ["random"]
    staged = TokenUnifyPretrain(**TINY, schedule="staged", stage_steps=5)
    assert staged.active(4) == ["random"] and staged.active(5) == ["next", "next_all"]
    assert TokenUnifyPretrain(**TINY, schedule="sum").active(0) == ["random", "next", "next_all"]
    with pytest.raises(ValueError, match="weights"):
        TokenUnifyPretrain(**TINY, weights={"random": 0.0})


def test_prefix_objectives_cannot_see_the_blanked_future():
    torch.manual_seed(0)
    m = TokenUnifyPretrain(**TINY).eval()
    vol = torch.rand(1, 1, 4, 8, 8)
    tokens = patchify(vol, m.patch)
    hidden = torch.arange(8)[None] >= 3  # K = 3 visible tokens
    blanked = m._blank(tokens, hidden)
    assert torch.equal(blanked[:, :3], tokens[:, :3]) and blanked[:, 3:].abs().sum() == 0
    other = tokens.clone()
    other[:, 3:] = torch.rand_like(other[:, 3:])  # a different future
    with torch.no_grad():
        f1 = m.encoder(unpatchify(m._blank(tokens, hidden), m.patch, (1, 4, 8, 8)))
        f2 = m.encoder(unpatchify(m._blank(other, hidden), m.patch, (1, 4, 8, 8)))
    assert torch.equal(f1, f2)
    out = m.losses(vol, ("random", "next", "next_all"), torch.Generator().manual_seed(0))
    assert set(out) == {"random", "next", "next_all"} and all(v.dim() == 0 for v in out.values())


def test_procedural_em_affinities_and_splits():
    lab = np.array([[[1, 1, 2], [1, 1, 2], [0, 3, 3]]])  # one z plane
    aff = affinities(lab)
    assert aff.shape == (3, 1, 3, 3) and aff[0].sum() == 0  # no z predecessor
    assert aff[2, 0].tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]  # x: same label as the left neighbour, 0 excluded
    assert aff[1, 0].tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]  # y
    raw, labels = voronoi_em((4, 24, 24), cells=6, seed=1)
    assert raw.min() >= 0 and raw.max() <= 1 and labels.min() >= 1 and len(np.unique(labels)) > 1
    boundary = affinities(labels)[1:].min(0).values == 0
    assert raw[boundary.numpy()].mean() < raw[~boundary.numpy()].mean()  # membranes are dark
    train, test = EMVolumes(split="train", volumes=2, volume_shape=[8, 32, 32], crop=[4, 16, 16], cells=6), \
        EMVolumes(split="test", volumes=2, volume_shape=[8, 32, 32], crop=[4, 16, 16], cells=6)
    item = train[3]
    assert item["volume"].shape == (1, 4, 16, 16) and item["affinities"].shape == (3, 4, 16, 16)
    assert torch.equal(train[3]["volume"], item["volume"])  # a function of the index (exact resume)
    assert not torch.equal(test[0]["volume"][:, :4, :16, :16], train.vols[0][0][None, :4, :16, :16])


def test_voi_and_arand_on_hand_made_labels():
    gt = np.array([1, 1, 2, 2])
    assert voi(gt, gt) == pytest.approx(0) and arand(gt, gt) == pytest.approx(0)
    merged = np.array([1, 1, 1, 1])
    assert voi(gt, merged) == pytest.approx(1.0)  # in bits: H(gt | seg) = 1, H(seg | gt) = 0
    # pair counting: 2 of the 6 pairs the merged segment joins are joined in gt -> precision 1/3, recall 1
    assert arand(gt, merged) == pytest.approx(1 - 2 * (1 / 3) / (1 / 3 + 1))
    split = np.array([1, 2, 3, 4])
    assert voi(gt, split) == pytest.approx(1.0)  # the symmetric split error
    ignored = np.array([0, 0, 2, 2])  # gt 0 is ignored: only the last two voxels count
    assert voi(ignored, np.array([5, 6, 7, 7])) == pytest.approx(0)


def test_segmenting_perfect_affinities_recovers_the_cells():
    _, labels = voronoi_em((4, 32, 32), cells=8, seed=3)
    seg = segment(affinities(labels), seed_threshold=0.9)
    assert len(np.unique(seg)) == len(np.unique(labels))  # every cell found, none merged across sections
    assert voi(labels, seg) < 0.6 and arand(labels, seg) < 0.1  # what remains: one-voxel boundary assignments


def test_tiny_pretrain_then_finetune_then_segment(tmp_path):
    from vistok.config import load_config
    from vistok.training.trainer import train

    common = ["model.dim=16", "model.depth=1", "model.d_state=4", "data.volumes=2", "data.volume_shape=[8,32,32]",
              "data.cells=8", "data.repeat=8", "train.batch_size=4", "train.log_with=none", "train.progress=false",
              "train.image_every=0"]
    pre = train(load_config("configs/tokenunify/toy_pretrain.yaml", common + [
        "train.max_steps=24", "train.eval_every=24", "train.checkpoint_every=24", "train.log_every=1", "train.warmup_steps=2",
        f"train.output_dir={tmp_path}/pre"]))
    losses = [v for _, v in pre["losses"]]  # objectives alternate: compare windows holding both equally
    assert sum(losses[-6:]) < 0.9 * sum(losses[:6]), losses
    seg = train(load_config("configs/tokenunify/toy_seg.yaml", common + [
        "train.max_steps=12", "train.eval_every=12", "train.checkpoint_every=12", "train.log_every=4",
        f"train.output_dir={tmp_path}/seg", f"train.init_from={tmp_path}/pre",
        "train.init_skip=[head.,next_head.,stem.,decoder.]"]))
    assert {"eval/voi", "eval/arand"} <= set(seg["metrics"]) and math.isfinite(seg["metrics"]["eval/voi"])
    from vistok.loading import model_from_run

    pre_model = model_from_run(f"{tmp_path}/pre", use_ema=False)[0]
    seg_model = TokenUnifySeg(**{**TINY, "patch": [2, 8, 8]})
    from vistok.loading import init_from

    skipped = init_from(seg_model, f"{tmp_path}/pre", ["head.", "next_head.", "stem.", "decoder."])
    assert any(k.startswith("decoder.") for k in skipped) and not any(k.startswith("encoder.") for k in skipped)
    assert torch.equal(seg_model.encoder.embed.weight, pre_model.encoder.embed.weight)
