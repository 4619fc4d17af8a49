"""Triangle meshes for the 3D shape tokenizers: occupancy grids to meshes, loading and normalising meshes, surface
samples, the PLY size a mesh costs, and a small pure-numpy point renderer for image grids.

- ``grid_to_mesh``: marching cubes on an R,R,R grid of occupancy logits (positive = inside) sampled at
  ``np.linspace(-bound, bound, R)`` along x, y, z (index order [x, y, z]); outward normals.
- ``load_mesh`` / ``normalize_mesh`` / ``write_mesh``: .obj/.ply/.off/.stl in, closed surfaces only (occupancy needs
  an inside), centred and scaled into the [-1, 1] cube, atomic writes out.
- ``sample_surface`` / ``connected_components`` / ``ply_bytes``: what the metrics and the size tables need.
- ``render_points`` / ``render_mesh``: orthographic, z-buffered, Lambert-shaded splats; **y is up** (the ShapeNet /
  Occupancy Networks convention), azimuth turns about y, elevation tilts the camera down towards the x-z plane.
"""
from __future__ import annotations

import os

import numpy as np
import trimesh

MESH_EXTENSIONS = (".obj", ".off", ".ply", ".stl")
TINT = np.array([150.0, 165.0, 190.0])  # grey-blue, scaled by the shading
LIGHT = np.array([-1.0, 1.0, 1.5]) / np.linalg.norm([-1.0, 1.0, 1.5])  # camera frame: upper left, towards viewer


def empty_mesh() -> trimesh.Trimesh:
    """A mesh with no vertices and no faces (what a failed decode gives)."""
    return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64), process=False)


def is_empty(mesh: trimesh.Trimesh) -> bool:
    return mesh is None or len(mesh.faces) == 0


def grid_to_mesh(values: np.ndarray, level: float = 0.0, bound: float = 1.0) -> trimesh.Trimesh:
    """The surface ``values == level`` of an R,R,R grid (inside: ``values > level``) sampled at
    ``np.linspace(-bound, bound, R)`` along x, y, z, in world coordinates, faces wound so normals point out.

    The grid is padded by one cell of outside first, so shapes touching the border still close (flat on the
    cube's face: vertices are clipped to [-bound, bound]). A grid with no crossing (all inside or all outside)
    gives an empty mesh rather than an error."""
    from skimage.measure import marching_cubes

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 3 or len(set(values.shape)) != 1 or values.shape[0] < 2:
        raise ValueError(f"grid_to_mesh: values must be an R,R,R grid with R >= 2, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("grid_to_mesh: values contain NaN or infinity")
    if bound <= 0:
        raise ValueError(f"grid_to_mesh: bound must be positive, got {bound}")
    if values.max() <= level or values.min() > level:
        return empty_mesh()
    step = 2.0 * bound / (values.shape[0] - 1)
    padded = np.pad(values, 1, mode="constant", constant_values=min(float(values.min()), level) - 1.0)
    verts, faces, _, _ = marching_cubes(padded, level=level, spacing=(step, step, step))
    # padded index 1 is linspace's -bound; a surface cut by the border lies a fraction of a cell into the padding,
    # so it is clipped back onto the cube's face
    verts = np.clip(verts - step - bound, -bound, bound)
    # skimage's winding, read by trimesh's right-hand rule, points into values > level: reverse it
    return trimesh.Trimesh(vertices=verts.astype(np.float64), faces=faces[:, ::-1].astype(np.int64), process=True)


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform over the surface area (float32 n,3) and the normals of the faces they lie on."""
    if is_empty(mesh):
        raise ValueError("sample_surface: the mesh has no faces (nothing to sample)")
    if n < 1:
        raise ValueError(f"sample_surface: n must be >= 1, got {n}")
    points, face_index = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return points.astype(np.float32), mesh.face_normals[face_index].astype(np.float32)


def open_edges(mesh: trimesh.Trimesh) -> int:
    """Edges used by exactly one face (the boundary of the holes)."""
    return len(trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1))


def load_mesh(path: str, fill_holes: bool = True) -> trimesh.Trimesh:
    """A closed triangle mesh from .obj/.ply/.off/.stl (a scene's parts concatenated), vertices merged; small holes
    (triangles, quads) filled when ``fill_holes``. Anything unreadable, faceless or still open is a ValueError that
    names ``path``."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in MESH_EXTENSIONS:
        raise ValueError(f"{path}: unknown mesh extension {ext!r} (expected one of {', '.join(MESH_EXTENSIONS)})")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such mesh file")
    try:
        mesh = trimesh.load(path, force="mesh")
        if isinstance(mesh, trimesh.Scene):
            parts = [g for g in mesh.geometry.values() if isinstance(g, trimesh.Trimesh)]
            mesh = trimesh.util.concatenate(parts) if parts else empty_mesh()
    except Exception as e:  # trimesh's parsers raise anything from KeyError to struct.error on bad files
        raise ValueError(f"{path}: could not be read as a {ext} mesh ({type(e).__name__}: {e})") from e
    if not isinstance(mesh, trimesh.Trimesh) or is_empty(mesh):
        raise ValueError(f"{path}: mesh has no faces")
    mesh.merge_vertices()
    if not mesh.is_watertight and fill_holes:
        mesh.fill_holes()
    if not mesh.is_watertight:
        raise ValueError(f"{path}: mesh is not watertight after fill_holes ({open_edges(mesh)} open edges, "
                         f"fill_holes={fill_holes}); occupancy needs a closed surface")
    return mesh


def normalize_mesh(mesh: trimesh.Trimesh, bound: float = 0.95) -> trimesh.Trimesh:
    """A copy centred on its bounding-box centre and scaled so the largest half-extent is ``bound``."""
    if is_empty(mesh):
        raise ValueError("normalize_mesh: the mesh has no faces")
    if not 0 < bound <= 1:
        raise ValueError(f"normalize_mesh: bound must be in (0, 1], got {bound}")
    lo, hi = mesh.bounds
    half = float((hi - lo).max()) / 2
    if half <= 0:
        raise ValueError("normalize_mesh: the mesh has zero extent")
    out = mesh.copy()
    out.vertices = (mesh.vertices - (lo + hi) / 2) * (bound / half)
    return out


def ply_header(num_vertices: int, num_faces: int) -> bytes:
    """The binary PLY header ``write_mesh`` writes: float32 x, y, z per vertex; a uchar count and three int32
    indices per face (the layout trimesh's exporter uses too, without its comment line)."""
    return ("ply\nformat binary_little_endian 1.0\n"
            f"element vertex {num_vertices}\nproperty float x\nproperty float y\nproperty float z\n"
            f"element face {num_faces}\nproperty list uchar int vertex_indices\nend_header\n").encode("ascii")


def ply_bytes(mesh: trimesh.Trimesh) -> int:
    """Bytes of ``mesh`` as the binary PLY ``write_mesh`` writes: ``len(ply_header(V, F)) + 12 V + 13 F``
    (3 float32 per vertex; 1 uchar + 3 int32 per face)."""
    v, f = len(mesh.vertices), len(mesh.faces)
    return len(ply_header(v, f)) + 12 * v + 13 * f


def ply_data(mesh: trimesh.Trimesh) -> bytes:
    """The whole binary PLY file of ``mesh`` (``ply_bytes(mesh)`` long)."""
    faces = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"], faces["v"] = 3, np.asarray(mesh.faces)
    verts = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    return ply_header(len(verts), len(faces)) + verts.tobytes() + faces.tobytes()


def write_mesh(mesh: trimesh.Trimesh, path: str) -> None:
    """Write ``mesh`` as .obj (trimesh's exporter) or binary .ply (``ply_data``), through ``path + '.tmp'`` and a
    rename, so a crash never leaves half a file at ``path``. An empty mesh (nothing above the iso-level) is a
    valid empty file (trimesh's OBJ exporter would write a bare ``v`` / ``f`` pair that no reader accepts)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".ply":
        data = ply_data(mesh)
    elif ext == ".obj":
        data = b"# vistok: empty mesh\n" if len(mesh.faces) == 0 else mesh.export(file_type="obj").encode("utf-8")
    else:
        raise ValueError(f"{path}: write_mesh writes .obj or .ply, not {ext!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def camera_rotation(elevation: float, azimuth: float) -> np.ndarray:
    """World -> camera rotation (3,3): turn by ``azimuth`` degrees about y (up), then tilt by ``elevation``
    degrees about the camera's x so the camera looks down on the shape. Camera frame: x right, y up, +z towards
    the viewer."""
    a, e = np.radians(azimuth), np.radians(elevation)
    turn = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return tilt @ turn


def render_points(points: np.ndarray, normals: np.ndarray, size: int = 96, elevation: float = 25,
                  azimuth: float = 35) -> np.ndarray:
    """A size,size,3 uint8 image of oriented points in the [-1, 1] cube: orthographic ([-1, 1] spans the image),
    each point splatted to a 2x2 pixel footprint, the nearest point per pixel wins, Lambert shading
    ``|n . light|`` (light from the camera's upper left) on a grey-blue tint, white background. y is up."""
    points, normals = np.asarray(points, dtype=np.float64), np.asarray(normals, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"render_points: points must be N,3, got shape {points.shape}")
    if normals.shape != points.shape:
        raise ValueError(f"render_points: normals must match points {points.shape}, got {normals.shape}")
    if size < 2:
        raise ValueError(f"render_points: size must be >= 2, got {size}")
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    if len(points) == 0:
        return image
    rot = camera_rotation(elevation, azimuth)
    cam, cam_n = points @ rot.T, normals @ rot.T
    u = (cam[:, 0] + 1) * (size / 2) - 0.5  # pixel centres: column j covers u in [j - 0.5, j + 0.5]
    v = (1 - cam[:, 1]) * (size / 2) - 0.5
    u0, v0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    cols = np.concatenate([u0, u0 + 1, u0, u0 + 1])
    rows = np.concatenate([v0, v0, v0 + 1, v0 + 1])
    which = np.tile(np.arange(len(points)), 4)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    pix, which = rows[keep] * size + cols[keep], which[keep]
    if len(pix) == 0:
        return image
    order = np.lexsort((-cam[which, 2], pix))  # per pixel, nearest (largest camera z) first
    pix_sorted = pix[order]
    first = np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]
    winners, pix_won = which[order[first]], pix_sorted[first]
    shade = np.abs(cam_n[winners] @ LIGHT)
    colour = TINT[None] * (0.3 + 0.7 * shade[:, None])
    image.reshape(-1, 3)[pix_won] = np.clip(colour, 0, 255).astype(np.uint8)
    return image


def failed_image(size: int = 96) -> np.ndarray:
    """All white with a thin red cross corner to corner: a failed decode, visible in a grid."""
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    i = np.arange(size)
    image[i, i] = image[i, size - 1 - i] = (220, 30, 30)
    return image


def render_mesh(mesh: trimesh.Trimesh, size: int = 96, n: int = 20000, seed: int = 0) -> np.ndarray:
    """``render_points`` of ``n`` surface samples; an empty mesh gives ``failed_image``."""
    if is_empty(mesh):
        return failed_image(size)
    points, normals = sample_surface(mesh, n, seed=seed)
    return render_points(points, normals, size=size)


def connected_components(mesh: trimesh.Trimesh) -> int:
    """Number of face-connected pieces (open ones included); 0 for an empty mesh."""
    if is_empty(mesh):
        return 0
    return len(mesh.split(only_watertight=False))
