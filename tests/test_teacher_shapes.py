"""The ShapesWorld teacher (issue #16, item 1): colour-preserving crop/flip views, the default affine views
unchanged, a clear error for an unknown view kind, and the committed `checkpoints/teacher-shapes` (RGB, trained
without labels) whose pooled embedding tells colours apart better than a random-init teacher's."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from vistok.config import ConfigError, load_config
from vistok.data.shapes import COLORS, ShapesWorld
from vistok.modeling import VistokModel
from vistok.tokenizers.semantic_teacher import ContrastiveViT, random_affine, random_crop_flip

RELEASE = os.path.join(ROOT, "checkpoints", "teacher-shapes")
PALETTE = torch.tensor([(0, 0, 0)] + list(COLORS.values()), dtype=torch.float32) / 127.5 - 1  # black background first


def _scenes(n, max_objects=4, split="test"):
    ds = ShapesWorld(split, size=max(n, 1), max_objects=max_objects)
    metas = [ds.scene(i) for i in range(n)]
    images = torch.stack([torch.from_numpy(ds.render(m)).permute(2, 0, 1).float() / 127.5 - 1 for m in metas])
    return images, metas


def _nearest_palette(x):
    """(B,3,H,W) -> the index of the nearest palette colour per pixel (B,H,W) and its distance."""
    d = torch.cdist(x.permute(0, 2, 3, 1).reshape(-1, 3), PALETTE)
    dist, idx = d.min(-1)
    return idx.view(x.shape[0], *x.shape[2:]), dist.view(x.shape[0], *x.shape[2:])


def test_crop_flip_views_keep_the_colours():
    x, _ = _scenes(32)
    torch.manual_seed(0)
    v = random_crop_flip(x, crop_scale=(0.6, 1.0), flip_prob=0.5)
    assert v.shape == x.shape
    idx_x, _ = _nearest_palette(x)
    idx_v, dist_v = _nearest_palette(v)
    assert float((dist_v < 0.05).float().mean()) > 0.8  # most pixels stay exact palette colours (blends only at edges)
    for i in range(len(x)):
        before = {int(c) for c in idx_x[i].unique() if c}
        # the colours a view shows (a few clean pixels each) are the scene's own: a crop may drop an object, never
        # shift a colour; and a colour that covers a whole object in the view (>= 12 clean pixels) stays
        clean = idx_v[i][dist_v[i] < 0.05]
        counts = torch.bincount(clean, minlength=len(PALETTE))
        assert {c for c in range(1, len(PALETTE)) if counts[c] >= 3} <= before
        assert int(counts[0]) > 0  # the black background is still there
    # the whole image, flipped: exactly the mirror image (the crop/resize reads only pixel centres)
    assert torch.allclose(random_crop_flip(x, (1.0, 1.0), 1.0), x.flip(-1), atol=1e-6)
    assert torch.allclose(random_crop_flip(x, (1.0, 1.0), 0.0), x, atol=1e-6)
    # no padding value ever enters: a constant image stays that constant under any crop and flip
    const = torch.full((8, 3, 32, 32), 0.3)
    assert torch.allclose(random_crop_flip(const, (0.2, 1.0), 0.5), const, atol=1e-6)


def test_crop_flip_dominant_colour_unchanged():
    x, metas = _scenes(24, max_objects=1)
    torch.manual_seed(1)
    v = random_crop_flip(x, crop_scale=(0.6, 1.0), flip_prob=0.5)
    idx_x, _ = _nearest_palette(x)
    idx_v, _ = _nearest_palette(v)
    for i, m in enumerate(metas):
        obj = list(COLORS).index(m["objects"][0]["color"]) + 1
        fg = idx_v[i][idx_v[i] > 0]
        if len(fg) >= 8:  # the crop kept (part of) the object: its dominant colour is the object's
            assert int(fg.mode().values) == obj == int(idx_x[i][idx_x[i] > 0].mode().values)


def test_default_views_are_the_affine_ones_unchanged():
    x, _ = _scenes(8)
    model = ContrastiveViT(image_size=32, in_channels=3, patch=4, dim=16, depth=1, heads=2)
    assert model.views == "affine"
    torch.manual_seed(3)
    ours = model.view(x)
    torch.manual_seed(3)
    assert torch.equal(ours, random_affine(x))
    # the training loss consumes the random stream exactly as before (two affine views, then NT-Xent)
    torch.manual_seed(4)
    loss = model({"image": x})["loss"]
    torch.manual_seed(4)
    from vistok.tokenizers.semantic_teacher import nt_xent

    a, b = model.proj(model.embed(random_affine(x))), model.proj(model.embed(random_affine(x)))
    assert torch.equal(loss, nt_xent(a, b, model.temperature))
    # the MNIST teacher, saved before the option existed, loads with the affine views
    mnist = VistokModel.from_pretrained(os.path.join(ROOT, "checkpoints", "teacher-mnist"))
    assert mnist.views == "affine" and "views" not in json.load(open(os.path.join(ROOT, "checkpoints", "teacher-mnist", "config.json")))


def test_bad_view_options_error():
    with pytest.raises(ValueError, match=r"views='jitter'.*'affine', 'crop_flip'"):
        ContrastiveViT(views="jitter")
    with pytest.raises(ValueError, match="crop_scale"):
        ContrastiveViT(views="crop_flip", crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop_scale"):
        ContrastiveViT(views="crop_flip", crop_scale=(0.9, 0.5))
    with pytest.raises(ConfigError, match="views"):
        load_config(os.path.join(ROOT, "configs/teacher/shapes.yaml"), ["model.views=jitter"])


def _colour_presence_accuracy(model, x, metas, n_fit):
    """For each palette colour, "does the scene show it?" from the pooled embedding by nearest centroid (cosine,
    centroids of the first ``n_fit`` scenes, scored on the rest): the balanced accuracy, averaged over the colours."""
    with torch.no_grad():
        e = F.normalize(model.embed(x), dim=-1)
    accs = []
    for c in COLORS:
        y = torch.tensor([any(o["color"] == c for o in m["objects"]) for m in metas])
        cent = F.normalize(torch.stack([e[:n_fit][y[:n_fit] == k].mean(0) for k in (False, True)]), dim=-1)
        pred, truth = (e[n_fit:] @ cent.t()).argmax(-1).bool(), y[n_fit:]
        accs.append(0.5 * (float(pred[truth].float().mean()) + float((~pred[~truth]).float().mean())))
    return sum(accs) / len(accs)


def test_committed_teacher_shapes_loads_and_separates_colours():
    cfg = json.load(open(os.path.join(RELEASE, "config.json")))
    assert cfg["model_type"] == "vit_teacher" and cfg["views"] == "crop_flip"
    teacher = VistokModel.from_pretrained(RELEASE)
    assert isinstance(teacher, ContrastiveViT) and teacher.in_channels == 3 and teacher.image_size == 32
    x, metas = _scenes(240, max_objects=4)  # held-out scenes (split "test"), 1-4 objects
    assert teacher.tokens(x[:2]).shape == (2, teacher.grid ** 2, teacher.dim)
    assert teacher.embed(x[:2]).shape == (2, teacher.dim)
    torch.manual_seed(0)
    fresh = ContrastiveViT(**{k: v for k, v in cfg.items() if k not in ("model_type", "vistok_version", "format_version")}).eval()
    trained, random_init = _colour_presence_accuracy(teacher, x, metas, 160), _colour_presence_accuracy(fresh, x, metas, 160)
    # measured: trained 0.95, random init 0.74 (seeds 0-2: 0.74 each); chance 0.5
    assert trained > 0.85 and trained > random_init + 0.1, (trained, random_init)
