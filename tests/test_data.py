"""Datasets: the fixed MNIST split, ShapesWorld determinism and metadata, image folders and bad images."""
import json

import pytest
import torch
from PIL import Image

from vistok.data.images import ImageFolder
from vistok.data.mnist import MNIST, split_indices
from vistok.data.shapes import COLORS, SHAPES, ShapesWorld


def test_mnist_split_is_fixed_balanced_and_disjoint():
    tr, te = split_indices("train"), split_indices("test")
    assert len(tr) == 4500 and len(te) == 500 and not set(tr) & set(te)
    test = MNIST("test")
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert test.images.shape == (500, 1, 32, 32) and test.images.min() == -1 and test.images.max() <= 1
    assert (split_indices("test") == te).all()  # same every call
    assert len(set(MNIST("train", limit=50).labels.tolist())) >= 8  # a prefix mixes the classes


def test_shapesworld_deterministic_and_metadata_matches_pixels():
    ds = ShapesWorld("train", size=50, max_objects=3)
    a, b = ds[7], ShapesWorld("train", size=50, max_objects=3)[7]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert not torch.equal(ShapesWorld("test", size=50, max_objects=3)[7]["image"], a["image"])
    for i in range(50):
        meta = ds.scene(i)
        img = ds.render(meta)
        for o in meta["objects"]:
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2 + (2 if o["shape"] == "triangle" else 0)
            assert tuple(img[cy, cx]) == COLORS[o["color"]]
            assert o["shape"] in SHAPES
        assert sum(meta["counts"].values()) == len(meta["objects"])
        assert meta["caption"]


def test_shapesworld_captions():
    ds = ShapesWorld("train", size=200, max_objects=2, same_kind_prob=0.5)
    caps = [ds.scene(i)["caption"] for i in range(200)]
    assert any(" left of " in c or " right of " in c or " above " in c or " below " in c for c in caps)
    assert any(c.startswith("two ") for c in caps)


def _write(path, size=(40, 30), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path)


def test_image_folder_layouts_and_captions(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "cls" / "train" / c).mkdir(parents=True)
        for i in range(3):
            _write(tmp_path / "cls" / "train" / c / f"{i}.png")
    ds = ImageFolder(str(tmp_path / "cls"), split="train", image_size=16)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"] and sorted(set(ds.labels)) == [0, 1]
    assert ds[0]["image"].shape == (3, 16, 16)
    flat = tmp_path / "flat"
    flat.mkdir()
    _write(flat / "a.jpg")
    _write(flat / "b.png")
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"file": f, "caption": f"pic {f}"}) for f in ("a.jpg", "b.png")))
    ds = ImageFolder(str(flat), image_size=8, captions=str(caps))
    assert ds[1]["caption"] == "pic b.png" and ds[0]["label"] == -1


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolder(str(tmp_path / "missing_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolder(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = ImageFolder(str(bad), image_size=8)
    with pytest.raises(ValueError, match=r"cannot read image '.*broken\.png'"):
        [ds[i] for i in range(len(ds))]
