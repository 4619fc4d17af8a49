"""VAT: procedural 3-D shapes with exact occupancy, the encoder's invariance to the order of its points, token counts
per scale, the occupancy decoder, learning a few steps, and the next-scale AR generator over 1-D scales."""
import numpy as np
import pytest
import torch

from vistok.data.shapes3d import PRIMITIVES, ProceduralShapes3D, random_primitive, shape_sdf
from vistok.generators.ar import ARGenerator
from vistok.tokenizers.vat import VAT

TINY = dict(dim=32, heads=2, enc_depth=1, dec_depth=1, latent_dim=4, scales=[1, 2, 4, 8], codebook_size=16,
            triplane_res=4, triplane_up=2, triplane_channels=8, mlp_hidden=16, mesh_resolution=16)


def tiny(stage=1, **kw):
    torch.manual_seed(0)
    return VAT(stage=stage, **{**TINY, **kw})


@pytest.fixture(scope="module")
def shapes():
    return ProceduralShapes3D("train", size=16, num_points=128, pool=512, num_uniform=256, num_near=256,
                              mesh_resolution=24)


def batch_of(ds, n=8):
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else torch.tensor([it[k] for it in items])
            for k in items[0]}


def test_primitive_occupancy_is_exact():
    rng = np.random.default_rng(0)
    sphere = random_primitive("sphere", rng, 0.5)
    assert shape_sdf([sphere], np.array([[0, 0, 0.49], [0, 0, 0.51]]))[0] < 0 < shape_sdf([sphere], np.array([[0, 0, 0.51]]))[0]
    box = {"kind": "box", "params": (0.5, 0.2, 0.1), "rotation": np.eye(3), "centre": np.zeros(3)}
    inside = shape_sdf([box], np.array([[0.45, 0.15, 0.05], [0.55, 0, 0], [0, 0.25, 0], [0, 0, 0.15]])) < 0
    assert inside.tolist() == [True, False, False, False]
    for kind in PRIMITIVES:  # every primitive is a closed solid inside the cube, its centre region occupied or a torus
        p = random_primitive(kind, rng, 0.8)
        corners = np.array([[0.99, 0.99, 0.99], [-0.99, 0.99, -0.99]])
        assert (shape_sdf([p], corners) > 0).all(), kind


def test_dataset_items_labels_and_occupancy(shapes):
    it = shapes[0]
    assert it["points"].shape == (128, 6) and it["queries"].shape == (512, 3) and it["occupancy"].shape == (512,)
    assert torch.allclose(it["points"][:, 3:].norm(dim=-1), torch.ones(128), atol=1e-4)  # unit normals
    # surface points lie on the surface: |sdf| small; near-surface queries have both labels
    d = shape_sdf(shapes.shapes[0][0], it["points"][:, :3].numpy())
    assert np.abs(d).max() < 0.05
    assert 0 < float(it["occupancy"][256:].mean()) < 1
    assert shapes.class_names == list(PRIMITIVES) and {shapes[i]["label"] for i in range(16)} <= set(range(6))
    held = ProceduralShapes3D("test", size=2, mesh_resolution=16, pool=256, num_points=64)
    assert torch.equal(held[1]["queries"], held[1]["queries"])  # fixed held-out items
    assert torch.equal(held[1]["points"], ProceduralShapes3D("test", size=2, mesh_resolution=16, pool=256, num_points=64)[1]["points"])
    unions = ProceduralShapes3D("train", size=12, union_fraction=1.0, mesh_resolution=16, pool=256)
    assert all(unions.shapes[i][1] >= 6 and len(unions.shapes[i][0]) == 2 for i in range(12))
    assert unions.num_classes == 6 + 21


def test_encoder_is_invariant_to_the_order_of_points(shapes):
    m = tiny().eval()
    pts = batch_of(shapes, 2)["points"]
    perm = pts[:, torch.randperm(pts.shape[1])]
    a, b = m.latent(pts)[1], m.latent(perm)[1]
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # but it does read the points


def test_token_counts_per_scale_and_prefix_decoding(shapes):
    m = tiny(stage=2).eval()
    b = batch_of(shapes, 2)
    m.train()
    m(b)  # k-means initialises the codebook on a first batch
    m.eval()
    codes = m.encode(b["points"])
    assert codes.shape == (2, 1 + 2 + 4 + 8) and codes.dtype == torch.long and int(codes.max()) < 16
    per_scale = m.split_codes(codes)
    assert [c.shape[1] for c in per_scale] == [1, 2, 4, 8]
    assert [c.shape[1] for c in m.split_codes(codes[:, :3])] == [1, 2]
    with pytest.raises(ValueError, match="first k scales"):
        m.split_codes(codes[:, :5])
    assert m.bytes_per_shape() == 15 * 4 // 8 + 1 and m.bytes_per_shape(2) == 2  # ceil(15 x 4 / 8) = 8, ceil(3 x 4 / 8) = 2
    grid_all, grid_two = m.decode(codes, resolution=8), m.decode(codes[:, :3], resolution=8)
    assert grid_all.shape == (2, 8, 8, 8) and not torch.allclose(grid_all, grid_two)
    assert torch.allclose(grid_two, m.decode(codes, resolution=8, num_scales=2))
    assert m.layout.num_tokens == 15 and m.layout.shape == (8,)


@pytest.mark.parametrize("upsample", ["conv", "shuffle"])
def test_occupancy_decoder_shapes(upsample):
    m = tiny(triplane_upsample=upsample)
    planes = m.triplane(torch.randn(3, 8, 4))
    assert planes.shape == (3, 3, 8, 8, 8)  # B, planes, C, R x up, R x up
    logits = m.occupancy_logits(planes, torch.rand(3, 100, 3) * 2 - 1)
    assert logits.shape == (3, 100)
    with pytest.raises(ValueError, match="B,P,6"):
        m.latent(torch.randn(2, 10, 3))


@pytest.mark.parametrize("variational,upsample", [(True, "conv"), (False, "conv"), (True, "shuffle")])
def test_vat_learns_occupancy(shapes, variational, upsample):
    m = tiny(variational=variational, dim=32, triplane_upsample=upsample)
    b = batch_of(shapes, 8)
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    losses = []
    for _ in range(120):
        out = m(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["bce"].detach()))
    assert ("kl" in out) == variational
    base = float(torch.nn.functional.binary_cross_entropy(b["occupancy"].mean().expand_as(b["occupancy"]), b["occupancy"]))
    assert np.mean(losses[-5:]) < 0.75 * base  # beats the best constant prediction
    m.eval()
    metrics = m.evaluate([b])
    assert metrics["accuracy"] > float(1 - b["occupancy"].mean()) and 0 < metrics["query_iou"] <= 1


def test_next_scale_ar_over_1d_scales_cached_equals_recomputed_and_learns():
    torch.manual_seed(0)
    g = ARGenerator(vocab_size=16, num_classes=3, dim=32, depth=2, heads=2, scales=[1, 2, 4, 8], scale_axes=1)
    assert g.layout.shape == (8,) and g.seq_len == 15
    g.check_fits({"tokenizer": tiny(stage=2)})
    with pytest.raises(ValueError, match="scales"):
        ARGenerator(vocab_size=16, num_classes=3, dim=32, depth=1, heads=2, scales=[1, 2, 4, 8]).check_fits({"tokenizer": tiny(stage=2)})
    g.eval()
    labels = torch.tensor([0, 2])
    kw = dict(cfg_scale=2.0, top_k=8)
    a = g.sample(labels, generator=torch.Generator().manual_seed(1), use_cache=True, **kw)
    b = g.sample(labels, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    assert a.shape == (2, 15) and torch.equal(a, b)
    codes = torch.randint(0, 16, (6, 15), generator=torch.Generator().manual_seed(2))
    full = g.teacher_forced_logits(torch.arange(6) % 3, codes)
    changed = codes.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 16  # scales 3 and 4 must not change the logits of scales 1-3
    again = g.teacher_forced_logits(torch.arange(6) % 3, changed)
    assert torch.allclose(full[:, :7], again[:, :7], atol=1e-5) and not torch.allclose(full[:, 7:], again[:, 7:])
    g.train()
    g.class_dropout = 0.0
    opt = torch.optim.AdamW(g.parameters(), 3e-3)
    batch = {"codes": codes, "label": torch.arange(6) % 3}
    first = float(g(batch)["loss"].detach())
    for _ in range(60):
        loss = g(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def trained(shapes, stage=2, steps=60):
    m = tiny(stage=stage)
    b = batch_of(shapes, 8)
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    for _ in range(steps):
        loss = m(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_release_from_pretrained_sample_writes_meshes_that_load(shapes, tmp_path):
    import trimesh

    from tests.conftest import call_cli
    from vistok.evaluation.shapes3d import evaluate_budgets
    from vistok.pipelines.base import Pipeline

    tok = trained(shapes)
    data = {"type": "shapes3d", "size": 4, "num_points": 128, "pool": 512, "mesh_resolution": 24,
            "reference_resolution": 32}
    gen = ARGenerator(vocab_size=16, num_classes=6, dim=32, depth=1, heads=2, scales=[1, 2, 4, 8], scale_axes=1)
    Pipeline(tokenizer=tok, generator=gen, data=data).save_pretrained(str(tmp_path / "rel"))
    pipe = Pipeline.from_pretrained(str(tmp_path / "rel"))
    assert pipe.pipeline_type == "class-to-shape"
    a, b = pipe([0, 3], seed=2, resolution=16), Pipeline.from_pretrained(str(tmp_path / "rel"))([0, 3], seed=2, resolution=16)
    assert len(a) == 2 and all(np.array_equal(x.vertices, y.vertices) for x, y in zip(a, b))
    call_cli(["sample.py", "--pipeline", tmp_path / "rel", "--out", tmp_path / "s", "--per-class", "1",
              "--resolution", "16", "--seed", "1"])
    files = sorted((tmp_path / "s").glob("*.obj"))
    assert len(files) == 6 and (tmp_path / "s" / "grid.png").is_file()
    loaded = [trimesh.load(f, force="mesh") for f in files]
    assert any(len(m.faces) > 0 for m in loaded)
    Pipeline(tokenizer=tok, data=data).save_pretrained(str(tmp_path / "recon"))
    call_cli(["sample.py", "--pipeline", tmp_path / "recon", "--out", tmp_path / "r", "--num-shapes", "2",
              "--writer", "ply", "--num-scales", "3", "--resolution", "24"])
    meshes = [trimesh.load(f, force="mesh") for f in sorted((tmp_path / "r").glob("*.ply"))]
    assert len(meshes) == 2 and all(len(m.faces) > 0 for m in meshes)
    from vistok.data.base import build_dataset

    result = evaluate_budgets(tok, build_dataset(data, "test"), 2, [1, 4], resolution=24, surface_samples=2000,
                              iou_points=2000)
    full = result["budgets"]["scales_4"]
    assert full["bytes"] == 8 and result["budgets"]["scales_1"]["bytes"] == 1 and full["tokens"] == 15
    assert 0 <= full["fscore@0.02"] <= 1 and 0 < full["iou"] <= 1 and full["compression_ratio"] > 100
    from vistok.evaluation.shapes3d import evaluate_generation

    gen_result, made = evaluate_generation(pipe, build_dataset(data, "test"), per_class=1, surface_samples=500)
    assert len(made) == 6 and gen_result["num_generated"] == 6 and gen_result["num_reference"] == 4
    assert 0 < gen_result["coverage"] <= 1 and gen_result["components_mean"] >= 0
    assert 0 <= gen_result["recognised_as_requested"] <= 1


def test_mesh_folder_modelnet_layout_and_a_broken_mesh(tmp_path):
    import trimesh

    from vistok.data.shapes3d import MeshFolder3D

    for split in ("train", "test"):
        (tmp_path / "cube" / split).mkdir(parents=True)
        trimesh.creation.box((2.0, 1.0, 1.0)).export(tmp_path / "cube" / split / "a.obj")
    ds = MeshFolder3D(str(tmp_path), split="train", num_points=64, pool=256, num_uniform=64, num_near=64, label_pool=2000,
                      cache_dir=str(tmp_path / "cache"))
    it = ds[0]
    assert it["points"].shape == (64, 6) and float(it["points"][:, :3].abs().max()) <= 0.951  # normalised into the cube
    # the box normalised to half-extents (0.95, 0.475, 0.475): occupancy from trimesh's contains
    assert ds.occupancy_at(0, np.array([[0.9, 0.0, 0.0], [0.0, 0.6, 0.0]])).tolist() == [True, False]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # labels cached
    broken = trimesh.creation.icosphere()
    broken.update_faces(broken.face_normals[:, 2] < 0.3)  # the top cut away: not closable by fill_holes
    broken.export(tmp_path / "cube" / "train" / "b.obj")
    with pytest.raises(ValueError, match="b.obj.*watertight"):
        MeshFolder3D(str(tmp_path), split="train", cache_dir=str(tmp_path / "cache"), pool=256, label_pool=2000)


def test_geometric_shape_classifier_recognises_held_out_procedural_shapes():
    from vistok.classifiers.shape_type import ShapeTypeClassifier

    clf = ShapeTypeClassifier.fit_procedural(shapes=60, resolution=32)
    test = ProceduralShapes3D("test", size=30, pool=64, mesh_resolution=16, reference_resolution=40)
    pred = clf.predict([test.mesh(i) for i in range(30)])
    accuracy = np.mean(np.array(pred) == np.array([test.shapes[i][1] for i in range(30)]))
    assert accuracy >= 0.7, accuracy  # chance: 1/6; 0.92 with 120 fitting shapes at 96^3 on 60 held-out shapes
    assert clf.predict([trimesh_empty()]) == [-1]


def trimesh_empty():
    from vistok.meshes import empty_mesh

    return empty_mesh()
