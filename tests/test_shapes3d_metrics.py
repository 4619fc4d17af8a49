"""3D shape scores against hand-computed values (F-score, Chamfer-L1, volume IoU, MMD / coverage, code bytes), and
the mesh layer they are fed from: marching cubes on analytic spheres, loading (watertight or refused), the PLY size
formula, and the point renderer."""
import math

import numpy as np
import pytest
import trimesh

from vistok.meshes import (connected_components, grid_to_mesh, load_mesh, normalize_mesh, ply_bytes, ply_header,
                           render_mesh, sample_surface, write_mesh)
from vistok.metrics.shapes3d import (bytes_per_code_sequence, chamfer_l1, fscore, mmd_coverage, surface_metrics,
                                     volume_iou)


def sphere_grid(r=65, radius=0.5, centre=(0.0, 0.0, 0.0)):
    g = np.linspace(-1, 1, r)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    c = np.asarray(centre)
    return radius - np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)


def sphere_points(n, radius=0.5, seed=1):
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sphere_mesh():
    return grid_to_mesh(sphere_grid())


def test_fscore_and_chamfer_by_hand():
    pred = np.array([[0, 0, 0], [1, 0, 0]], dtype=float)
    gt = np.array([[0, 0, 0.01], [0, 0, 0.5]])
    # pred -> gt: p0 -> g0 at 0.01 (< 0.02); p1 -> g0 at sqrt(1 + 0.01^2) = sqrt(1.0001) (> 0.02). P = 1/2
    # gt -> pred: g0 -> p0 at 0.01 (< 0.02); g1 -> p0 at 0.5 (> 0.02).                          R = 1/2
    # F = 2 * 1/2 * 1/2 / (1/2 + 1/2) = 1/2
    assert fscore(pred, gt, threshold=0.02) == pytest.approx(0.5)
    # Chamfer-L1 = 0.5 * ((0.01 + sqrt(1.0001)) / 2 + (0.01 + 0.5) / 2)
    assert chamfer_l1(pred, gt) == pytest.approx(0.5 * ((0.01 + math.sqrt(1.0001)) / 2 + 0.51 / 2))
    # a third gt point at 0.015 from p0 is recalled too: R = 2/3, P stays 1/2, F = 2 (1/2)(2/3) / (7/6) = 4/7
    gt3 = np.vstack([gt, [[0, 0, -0.015]]])
    assert fscore(pred, gt3, threshold=0.02) == pytest.approx(4 / 7)
    # and at threshold 0.012 only the 0.01 pair counts: P = 1/2, R = 1/3, F = (1/3) / (5/6) = 2/5
    m = surface_metrics(pred, gt3, thresholds=(0.012, 0.02))
    assert m == pytest.approx({"fscore@0.012": 2 / 5, "fscore@0.02": 4 / 7, "chamfer_l1": chamfer_l1(pred, gt3)})


def test_identical_and_shifted_point_sets():
    pts = sphere_points(2000)
    assert fscore(pts, pts) == 1.0 and chamfer_l1(pts, pts) == 0.0
    shifted = pts + np.array([0.0, 0.0, 2.0])  # every point 2 away from the other sphere at least 1
    assert fscore(shifted, pts, threshold=0.02) == 0.0
    assert chamfer_l1(shifted, pts) > 0.9


def test_empty_prediction_and_bad_inputs():
    gt = sphere_points(100)
    assert fscore(np.zeros((0, 3)), gt) == 0.0
    assert chamfer_l1(np.zeros((0, 3)), gt) == float("inf")
    assert surface_metrics([], gt) == {"fscore@0.01": 0.0, "fscore@0.02": 0.0, "chamfer_l1": float("inf")}
    with pytest.raises(ValueError, match="gt"):
        fscore(gt, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="pred.*N,3"):
        chamfer_l1(np.zeros((5, 2)), gt)
    with pytest.raises(ValueError, match="threshold"):
        fscore(gt, gt, threshold=0)


def test_marching_cubes_sphere_volume_and_surface(sphere_mesh):
    assert sphere_mesh.is_watertight
    assert sphere_mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5 ** 3, rel=0.03)  # positive: normals point out
    assert np.abs(sphere_mesh.bounds).max() == pytest.approx(0.5, abs=0.01)
    points, normals = sample_surface(sphere_mesh, 100_000, seed=0)
    assert points.dtype == normals.dtype == np.float32 and points.shape == normals.shape == (100_000, 3)
    assert np.mean(np.sum(points * normals, axis=1) > 0) > 0.99  # outward face normals
    m = surface_metrics(points, sphere_points(100_000))
    assert m["fscore@0.02"] > 0.99 and m["chamfer_l1"] < 0.01


def test_grid_to_mesh_empty_border_and_components():
    empty = grid_to_mesh(-np.ones((9, 9, 9)))
    assert empty.vertices.shape == (0, 3) and connected_components(empty) == 0
    assert grid_to_mesh(np.ones((9, 9, 9))).vertices.shape == (0, 3)  # all inside: no crossing either
    with pytest.raises(ValueError, match="sample_surface.*no faces"):
        sample_surface(empty, 10)
    with pytest.raises(ValueError, match="R,R,R"):
        grid_to_mesh(np.zeros((4, 4, 5)))
    two = np.maximum(sphere_grid(33, 0.3, (-0.5, 0, 0)), sphere_grid(33, 0.3, (0.5, 0, 0)))
    assert connected_components(grid_to_mesh(two)) == 2
    touching = grid_to_mesh(sphere_grid(33, 1.3), bound=2.0)  # world [-2, 2]: radius 1.3 * 2 crosses the border
    assert touching.is_watertight and touching.volume > 0 and np.abs(touching.vertices).max() <= 2.0


def test_volume_iou_by_hand():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([0, 1, 1, 0], dtype=bool)
    assert volume_iou(a, b) == pytest.approx(1 / 3)  # |{1}| / |{0, 1, 2}|
    assert volume_iou(a, a) == 1.0
    assert volume_iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert volume_iou(a, ~a) == 0.0
    with pytest.raises(ValueError, match="pred_occ.*boolean"):
        volume_iou(a.astype(float), b)
    with pytest.raises(ValueError, match="shape"):
        volume_iou(a, b[:3])


def test_mmd_coverage_by_hand():
    sphere = sphere_points(500, seed=2)
    box, _ = trimesh.sample.sample_surface(trimesh.creation.box(extents=(1, 1, 1)), 500, seed=3)
    out = mmd_coverage([sphere, sphere], [sphere, box])
    # both generated shapes are nearest to the reference sphere (D = 0): only 1 of 2 references covered;
    # MMD = (min_i D(gen_i, sphere) + min_i D(gen_i, box)) / 2 = (0 + D(sphere, box)) / 2
    assert out["coverage"] == 0.5
    assert out["mmd_chamfer_l1"] == pytest.approx(chamfer_l1(sphere, box) / 2)
    assert out["num_generated"] == 2 and out["num_reference"] == 2
    with pytest.raises(ValueError, match="non-empty"):
        mmd_coverage([], [sphere])


def test_bytes_per_code_sequence():
    assert bytes_per_code_sequence(256, 16384) == 448  # 14 bits each: 256 * 14 / 8
    assert bytes_per_code_sequence(3, 1000) == 4  # 10 bits each: 30 bits -> 4 bytes
    assert bytes_per_code_sequence(1, 1024) == 2 and bytes_per_code_sequence(1, 1025) == 2  # 10 and 11 bits
    with pytest.raises(ValueError, match="codebook_size"):
        bytes_per_code_sequence(4, 1)


def test_load_mesh_watertight_repaired_and_refused(tmp_path):
    box = trimesh.creation.box()
    path = str(tmp_path / "box.obj")
    box.export(path)
    loaded = load_mesh(path)
    assert loaded.is_watertight and len(loaded.faces) == 12
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)  # one triangle gone: a triangular hole
    holed_path = str(tmp_path / "holed.ply")
    holed.export(holed_path)
    assert load_mesh(holed_path).is_watertight
    with pytest.raises(ValueError, match="watertight"):
        load_mesh(holed_path, fill_holes=False)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    bowl = trimesh.Trimesh(sphere.vertices, sphere.faces[sphere.triangles_center[:, 2] < 0.3], process=False)
    bowl_path = str(tmp_path / "bowl.off")
    bowl.export(bowl_path)
    with pytest.raises(ValueError, match="watertight") as err:
        load_mesh(bowl_path)
    assert bowl_path in str(err.value)
    with pytest.raises(ValueError, match=r"\.txt"):
        load_mesh(str(tmp_path / "shape.txt"))
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"this is not a ply file\n\x00\x01\x02")
    with pytest.raises(ValueError) as err:
        load_mesh(str(garbage))
    assert str(garbage) in str(err.value)


def test_normalize_ply_bytes_and_write(tmp_path):
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    box.apply_translation((3.0, -1.0, 0.25))
    unit = normalize_mesh(box)
    np.testing.assert_allclose(unit.bounds, [[-0.95, -0.475, -0.2375], [0.95, 0.475, 0.2375]], atol=1e-9)
    assert box.bounds[0, 0] == pytest.approx(2.0)  # the input is not moved
    # 8 vertices * 3 float32 + 12 faces * (uchar count + 3 int32)
    assert ply_bytes(box) == len(ply_header(8, 12)) + 8 * 12 + 12 * 13
    path = str(tmp_path / "box.ply")
    write_mesh(box, path)
    assert (tmp_path / "box.ply").stat().st_size == ply_bytes(box) and not (tmp_path / "box.ply.tmp").exists()
    back = trimesh.load(path, force="mesh")
    np.testing.assert_allclose(back.vertices, box.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, box.faces)
    write_mesh(box, str(tmp_path / "box.obj"))
    assert load_mesh(str(tmp_path / "box.obj")).is_watertight
    for ext in ("obj", "ply"):  # an empty decoded shape still writes a file readers accept
        write_mesh(trimesh.Trimesh(), str(tmp_path / f"empty.{ext}"))
        empty = trimesh.load(str(tmp_path / f"empty.{ext}"), force="mesh")
        assert len(empty.vertices) == 0 and len(empty.faces) == 0


def test_render_mesh_sphere_is_round(sphere_mesh):
    size = 96
    image = render_mesh(sphere_mesh, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    ink = (image != 255).any(axis=2)
    # orthographic [-1, 1] over 96 px: radius 0.5 -> 24 px
    assert ink.sum() == pytest.approx(math.pi * 24 ** 2, rel=0.3)
    rows, cols = np.nonzero(ink)
    assert rows.mean() == pytest.approx(size / 2, abs=2) and cols.mean() == pytest.approx(size / 2, abs=2)
    assert image[ink].std() > 5  # shaded, not flat
    failed = render_mesh(grid_to_mesh(-np.ones((5, 5, 5))), size=size)
    assert failed.shape == (size, size, 3) and (failed[..., 1] < 100).sum() > size  # the red cross
