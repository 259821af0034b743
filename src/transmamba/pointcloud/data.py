"""Point-cloud data: generated synthetic shapes (the default), ModelNet40 and ScanObjectNN by path.

Every cloud is centred and scaled into the unit sphere (``normalize_cloud``: x ← (x − mean) / max‖x − mean‖),
as the papers' ModelNet pipeline does, and stored as float32 (n_clouds, P, 3) with int64 labels.

* ``synthetic_shapes`` — labelled surfaces sampled uniformly by area (sphere, box, cylinder, cone, torus,
  pyramid, capsule, disk, octahedron, dumbbell), each with a random anisotropic scale (0.7–1.3 per axis), a
  random rotation about the up (z) axis plus a tilt of up to 15°, and Gaussian noise (σ = 0.01), from a
  seed: the default data, generated in a fraction of a second, nothing to download.
* ``synthetic_local`` — the ablation set where only local structure tells the classes apart: every cloud
  is the same noisy ellipsoid carrying three small surface features of its class (bump, dent, spike, ridge,
  hole, flat cut, groove, double bump) at random places; a classifier must find the few groups that carry
  them, which is what importance ordering and pooling are for.
* ``load_modelnet40(root)`` — the ``modelnet40_normal_resampled`` layout: ``modelnet40_shape_names.txt``,
  ``modelnet40_{train,test}.txt`` (ids such as ``airplane_0001``) and ``<class>/<id>.txt`` files of
  comma-separated ``x,y,z,nx,ny,nz`` rows (``modelnet10_*`` with ``num_category=10``); the first
  ``max_points`` rows of each file are kept, normals dropped.
* ``load_scanobjectnn(root, variant)`` — the h5 release (datasets ``data`` (n, 2048, 3), ``label`` (n,)):
  ``hardest`` = PB_T50_RS (``main_split/*_objectdataset_augmentedrot_scale75.h5``), ``objectbg`` = OBJ_BG
  (``main_split/*_objectdataset.h5``), ``objectonly`` = OBJ_ONLY (``main_split_nobg/*_objectdataset.h5``).

Malformed input (wrong number of columns, NaN or inf, fewer points than the group size K) raises
``PointCloudDataError`` with one line naming the file and what is wrong.

Augmentations (``augment``), the papers' (Point-BERT's data_transforms, used by PoinTramba's runner):
``scale_translate`` (ModelNet: per-axis scale U[2/3, 3/2], translation U[−0.2, 0.2]), ``rotate``
(ScanObjectNN: a random rotation about the up axis, y in ScanObjectNN), ``none``. Training also draws a
random subset of ``num_points`` of a cloud's stored points each epoch (the official runner's FPS-1200-then-
random-1024 resampling, simplified); evaluation takes the first ``num_points``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PointCloudDataError",
    "PointCloudSet",
    "PointCloudData",
    "SHAPES",
    "LOCAL_FEATURES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "AUGMENTATIONS",
    "normalize_cloud",
    "synthetic_shapes",
    "synthetic_local",
    "read_point_file",
    "load_modelnet40",
    "load_scanobjectnn",
    "augment",
    "load_pointcloud_data",
]


class PointCloudDataError(ValueError):
    """A point file or data set that cannot feed the classifier; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------- container


@dataclass
class PointCloudSet:
    """points (n, P, 3) float32, labels (n,) int64, one split."""

    points: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""

    def __len__(self) -> int:
        return self.points.shape[0]

    def batches(
        self,
        batch_size: int,
        *,
        num_points: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        augmentation: str = "none",
        resample: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (points (B, num_points, 3), labels (B,)). ``resample``: a random subset of each cloud's
        stored points (training); otherwise the first ``num_points``. ``augmentation``: see ``augment``."""
        n, P, _ = self.points.shape
        if num_points > P:
            raise PointCloudDataError(f"{self.name}: clouds hold {P} points, {num_points} were asked for")
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for s in range(0, stop, batch_size):
            idx = order[s : s + batch_size]
            pts = self.points[idx]  # (B, P, 3)
            if resample and num_points < P:
                keep = torch.rand(len(idx), P, generator=generator).argsort(dim=1)[:, :num_points]
                pts = torch.gather(pts, 1, keep.unsqueeze(-1).expand(-1, -1, 3))
            else:
                pts = pts[:, :num_points]
            if augmentation != "none":
                pts = augment(pts, augmentation, generator)
            yield pts.contiguous(), self.labels[idx]


@dataclass
class PointCloudData:
    train: PointCloudSet
    test: PointCloudSet
    class_names: list[str]
    name: str
    augmentation: str = "none"
    info: dict = field(default_factory=dict)  # how to rebuild it (stored with checkpoints)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def normalize_cloud(x: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale into the unit sphere: (P, 3) -> (P, 3)."""
    x = x - x.mean(axis=0, keepdims=True)
    r = float(np.sqrt((x**2).sum(axis=1)).max())
    return x / r if r > 0 else x


# ----------------------------------------------------------------------------------------- synthetic


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _pick_by_area(rng: np.random.Generator, n: int, areas: list[float]) -> np.ndarray:
    """How many of n points go to each part, proportional to its area."""
    p = np.asarray(areas, dtype=float)
    return rng.multinomial(n, p / p.sum())


def _triangles(rng: np.random.Generator, n: int, tris: np.ndarray) -> np.ndarray:
    """n points uniform on a triangle mesh tris (T, 3, 3)."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    t = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[t] + u[:, None] * (b[t] - a[t]) + v[:, None] * (c[t] - a[t])


def _sphere(rng, n):
    return _unit(rng, n)


def _box(rng, n):
    # six faces of [-1, 1]^3, equal areas
    face = rng.integers(0, 6, n)
    p = rng.uniform(-1, 1, size=(n, 3))
    axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
    p[np.arange(n), axis] = sign
    return p


def _cylinder(rng, n, r=0.6, h=1.0):
    side, top, bottom = _pick_by_area(rng, n, [2 * math.pi * r * 2 * h, math.pi * r * r, math.pi * r * r])
    th = rng.uniform(0, 2 * math.pi, side)
    pts = [np.stack([r * np.cos(th), r * np.sin(th), rng.uniform(-h, h, side)], 1)]
    for m, z in ((top, h), (bottom, -h)):
        rr, a = r * np.sqrt(rng.random(m)), rng.uniform(0, 2 * math.pi, m)
        pts.append(np.stack([rr * np.cos(a), rr * np.sin(a), np.full(m, z)], 1))
    return np.concatenate(pts)


def _cone(rng, n, r=0.8, h=2.0):
    slant = math.hypot(r, h)
    side, base = _pick_by_area(rng, n, [math.pi * r * slant, math.pi * r * r])
    s = np.sqrt(rng.random(side))  # distance from the apex, uniform by area
    a = rng.uniform(0, 2 * math.pi, side)
    pts = [np.stack([r * s * np.cos(a), r * s * np.sin(a), h / 2 - h * s], 1)]
    rr, a = r * np.sqrt(rng.random(base)), rng.uniform(0, 2 * math.pi, base)
    pts.append(np.stack([rr * np.cos(a), rr * np.sin(a), np.full(base, -h / 2)], 1))
    return np.concatenate(pts)


def _torus(rng, n, R=0.75, r=0.25):
    # rejection on the area element (R + r cos v) for uniform density
    out = []
    while sum(len(o) for o in out) < n:
        u, v = rng.uniform(0, 2 * math.pi, 2 * n), rng.uniform(0, 2 * math.pi, 2 * n)
        keep = rng.random(2 * n) < (R + r * np.cos(v)) / (R + r)
        u, v = u[keep], v[keep]
        out.append(
            np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], 1)
        )
    return np.concatenate(out)[:n]


def _pyramid(rng, n):
    apex, b = (
        np.array([0.0, 0.0, 1.0]),
        [np.array(v, float) for v in ((-1, -1, -1), (1, -1, -1), (1, 1, -1), (-1, 1, -1))],
    )
    tris = [(apex, b[i], b[(i + 1) % 4]) for i in range(4)] + [(b[0], b[1], b[2]), (b[0], b[2], b[3])]
    return _triangles(rng, n, np.array(tris))


def _octahedron(rng, n):
    e = np.eye(3)
    tris = [(sx * e[0], sy * e[1], sz * e[2]) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    return _triangles(rng, n, np.array(tris))


def _capsule(rng, n, r=0.45, h=0.6):
    side, caps = _pick_by_area(rng, n, [2 * math.pi * r * 2 * h, 4 * math.pi * r * r])
    th = rng.uniform(0, 2 * math.pi, side)
    body = np.stack([r * np.cos(th), r * np.sin(th), rng.uniform(-h, h, side)], 1)
    s = _unit(rng, caps) * r
    s[:, 2] += np.where(s[:, 2] >= 0, h, -h)
    return np.concatenate([body, s])


def _disk(rng, n, r=1.0, t=0.05):
    rr, a = r * np.sqrt(rng.random(n)), rng.uniform(0, 2 * math.pi, n)
    return np.stack([rr * np.cos(a), rr * np.sin(a), rng.choice([-t, t], n)], 1)


def _dumbbell(rng, n, r=0.4, gap=0.7, rod=0.1):
    balls, bar = _pick_by_area(rng, n, [2 * 4 * math.pi * r * r, 2 * math.pi * rod * 2 * gap])
    s = _unit(rng, balls) * r
    s[:, 2] += np.where(rng.random(balls) < 0.5, -(gap + r * 0.8), gap + r * 0.8)
    th = rng.uniform(0, 2 * math.pi, bar)
    b = np.stack([rod * np.cos(th), rod * np.sin(th), rng.uniform(-gap, gap, bar)], 1)
    return np.concatenate([s, b])


SHAPES = {
    "sphere": _sphere,
    "box": _box,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": _pyramid,
    "capsule": _capsule,
    "disk": _disk,
    "octahedron": _octahedron,
    "dumbbell": _dumbbell,
}


def _rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """A random rotation about z composed with a tilt of up to max_tilt_deg about a random horizontal axis."""
    a = rng.uniform(0, 2 * math.pi)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t = math.radians(rng.uniform(0, max_tilt_deg))
    b = rng.uniform(0, 2 * math.pi)
    k = np.array([math.cos(b), math.sin(b), 0.0])
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    tilt = np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K  # Rodrigues
    return tilt @ rz


def _finish(rng: np.random.Generator, p: np.ndarray, noise: float, max_tilt_deg: float) -> np.ndarray:
    p = p * rng.uniform(0.7, 1.3, size=3)  # anisotropic scale
    p = p @ _rotation(rng, max_tilt_deg).T
    p = normalize_cloud(p)
    return p + noise * rng.normal(size=p.shape)


def synthetic_shapes(
    n_clouds: int,
    num_points: int,
    *,
    num_classes: int = 8,
    seed: int = 0,
    noise: float = 0.01,
    max_tilt_deg: float = 15.0,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n_clouds labelled clouds (balanced, class = i mod C) of the first ``num_classes`` SHAPES:
    -> (points (n, P, 3) float32, labels (n,) int64, class names)."""
    names = list(SHAPES)
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"synthetic shapes: num_classes must be in [2, {len(names)}], got {num_classes}")
    names = names[:num_classes]
    rng = np.random.default_rng(seed)
    pts = np.empty((n_clouds, num_points, 3), dtype=np.float32)
    labels = np.arange(n_clouds) % num_classes
    rng.shuffle(labels)
    for i, c in enumerate(labels):
        p = SHAPES[names[c]](rng, num_points)
        pts[i] = _finish(rng, p[rng.permutation(len(p))], noise, max_tilt_deg)
    return torch.from_numpy(pts), torch.from_numpy(labels.astype(np.int64)), names


# ------------------------------------------------------------------------ synthetic: local structure

LOCAL_FEATURES = ("bump", "dent", "spike", "ridge", "hole", "flat", "groove", "double-bump")


def _local_feature(p: np.ndarray, centre: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one surface feature of ``kind`` around unit vector ``centre`` to sphere points p (P, 3)."""
    cosang = p @ centre  # (P,)
    ang = np.arccos(np.clip(cosang, -1, 1))
    w = 0.5  # angular radius of a feature (rad): ~6% of the sphere
    radial = np.ones(len(p))
    inside = ang < w
    g = np.exp(-((ang / (0.5 * w)) ** 2))
    if kind == "bump":
        radial += 0.5 * g
    elif kind == "dent":
        radial -= 0.4 * g
    elif kind == "spike":
        radial += np.where(inside, 0.8 * (1 - ang / w), 0.0)
    elif kind == "ridge":
        radial += 0.35 * np.exp(-(((ang - 0.6 * w) / (0.15 * w)) ** 2))
    elif kind == "hole":
        radial = np.where(inside, np.nan, radial)  # dropped below, the points re-drawn elsewhere
    elif kind == "flat":
        radial = np.where(inside, np.cos(w) / np.maximum(cosang, 1e-3), radial)
    elif kind == "groove":
        # a short straight trench through the centre
        ax = np.cross(centre, _unit(rng, 1)[0])
        ax /= np.linalg.norm(ax)
        radial -= np.where(inside, 0.35 * np.exp(-(((p @ ax) / 0.08) ** 2)), 0.0)
    elif kind == "double-bump":
        off = np.cross(centre, _unit(rng, 1)[0])
        off = off / np.linalg.norm(off) * 0.25
        for c in (centre + off, centre - off):
            c = c / np.linalg.norm(c)
            a = np.arccos(np.clip(p @ c, -1, 1))
            radial += 0.4 * np.exp(-((a / 0.15) ** 2))
    return p * radial[:, None]


def synthetic_local(
    n_clouds: int,
    num_points: int,
    *,
    num_classes: int = 8,
    seed: int = 0,
    noise: float = 0.01,
    features_per_cloud: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Clouds told apart only by small surface features (module doc): -> (points, labels, class names)."""
    if not 2 <= num_classes <= len(LOCAL_FEATURES):
        raise ValueError(
            f"synthetic local: num_classes must be in [2, {len(LOCAL_FEATURES)}], got {num_classes}"
        )
    names = list(LOCAL_FEATURES[:num_classes])
    rng = np.random.default_rng(seed)
    pts = np.empty((n_clouds, num_points, 3), dtype=np.float32)
    labels = np.arange(n_clouds) % num_classes
    rng.shuffle(labels)
    for i, c in enumerate(labels):
        p = _unit(rng, num_points * 3)
        centres = _unit(rng, features_per_cloud)
        for ctr in centres:
            p = _local_feature(p, ctr, names[c], rng)
        p = p[np.isfinite(p).all(axis=1)]
        p = p[rng.permutation(len(p))[:num_points]]
        # dense oversampling then a uniform subset keeps the density of the features close to the surface's
        p = p * rng.uniform(0.85, 1.15, size=3)
        pts[i] = normalize_cloud(p @ _rotation(rng, 180.0).T) + noise * rng.normal(size=p.shape)
    return torch.from_numpy(pts), torch.from_numpy(labels.astype(np.int64)), names


# -------------------------------------------------------------------------------------------- files


def _check_cloud_array(path: Path, x: np.ndarray, min_points: int) -> None:
    if x.ndim != 2 or x.shape[1] not in (3, 6):
        cols = x.shape[1] if x.ndim == 2 else f"shape {x.shape}"
        raise PointCloudDataError(
            f"{path}: has {cols} columns, expected 6 (x,y,z,nx,ny,nz) or 3 (x,y,z) per point"
        )
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x).all(axis=1))[0, 0])
        raise PointCloudDataError(f"{path}: NaN or inf at point {row + 1}; fix or drop that row")
    if x.shape[0] < min_points:
        raise PointCloudDataError(
            f"{path}: has {x.shape[0]} points, fewer than the group size K={min_points}; use a denser cloud"
        )


def read_point_file(path: str | Path, *, min_points: int = 1, max_points: int | None = None) -> np.ndarray:
    """One ModelNet-style text file (comma- or space-separated rows of x,y,z[,nx,ny,nz]) -> (P, 3) float32,
    the first ``max_points`` rows, normals dropped. Malformed files raise ``PointCloudDataError``."""
    path = Path(path)
    if not path.is_file():
        raise PointCloudDataError(f"{path}: no such point file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            try:
                rows.append([float(v) for v in parts])
            except ValueError:
                raise PointCloudDataError(f"{path}: line {lineno} is not numbers: {line[:60]!r}") from None
            if len(rows[-1]) != len(rows[0]):
                raise PointCloudDataError(
                    f"{path}: line {lineno} has {len(rows[-1])} columns, line 1 has {len(rows[0])}"
                )
            if max_points is not None and len(rows) >= max_points:
                break
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 3)
    _check_cloud_array(path, x, min_points)
    return x[:, :3].astype(np.float32)


def _fit_points(x: np.ndarray, P: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly P points: the first P, or all of them padded with random repeats."""
    if len(x) >= P:
        return x[:P]
    return np.concatenate([x, x[rng.integers(0, len(x), P - len(x))]])


def load_modelnet40(
    root: str | Path,
    split: str,
    *,
    max_points: int = 1024,
    num_category: int = 40,
    min_points: int = 16,
    limit: int | None = None,
) -> PointCloudSet:
    """A ``modelnet40_normal_resampled`` split (module doc) -> PointCloudSet with (n, max_points, 3)."""
    root = Path(root)
    names_file = root / f"modelnet{num_category}_shape_names.txt"
    split_file = root / f"modelnet{num_category}_{split}.txt"
    for f in (names_file, split_file):
        if not f.is_file():
            raise PointCloudDataError(
                f"{f}: not found; --data must be the modelnet40_normal_resampled folder "
                f"(with modelnet{num_category}_shape_names.txt and modelnet{num_category}_{{train,test}}.txt)"
            )
    classes = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classes)}
    ids = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    if limit is not None:
        ids = ids[:limit]
    rng = np.random.default_rng(0)
    pts = np.empty((len(ids), max_points, 3), dtype=np.float32)
    labels = np.empty(len(ids), dtype=np.int64)
    for i, sid in enumerate(ids):
        cls = sid.rsplit("_", 1)[0]
        if cls not in index:
            raise PointCloudDataError(
                f"{split_file}: id {sid!r} names class {cls!r}, not in {names_file.name}"
            )
        x = read_point_file(root / cls / f"{sid}.txt", min_points=min_points, max_points=max_points)
        pts[i] = normalize_cloud(_fit_points(x, max_points, rng))
        labels[i] = index[cls]
    return PointCloudSet(
        torch.from_numpy(pts), torch.from_numpy(labels), classes, f"modelnet{num_category}-{split}"
    )


SCANOBJECTNN_CLASSES = [
    "bag",
    "bin",
    "box",
    "cabinet",
    "chair",
    "desk",
    "display",
    "door",
    "shelf",
    "table",
    "bed",
    "pillow",
    "sink",
    "sofa",
    "toilet",
]
# variant -> (sub-folder, file stem); the paper's names in the comments
SCANOBJECTNN_VARIANTS = {
    "hardest": ("main_split", "objectdataset_augmentedrot_scale75"),  # PB_T50_RS
    "objectbg": ("main_split", "objectdataset"),  # OBJ_BG
    "objectonly": ("main_split_nobg", "objectdataset"),  # OBJ_ONLY
}


def _scanobjectnn_file(root: Path, variant: str, split: str) -> Path:
    if variant not in SCANOBJECTNN_VARIANTS:
        raise PointCloudDataError(f"ScanObjectNN variant {variant!r} not in {sorted(SCANOBJECTNN_VARIANTS)}")
    sub, stem = SCANOBJECTNN_VARIANTS[variant]
    name = f"{'training' if split == 'train' else 'test'}_{stem}.h5"
    for cand in (root / sub / name, root / name):
        if cand.is_file():
            return cand
    raise PointCloudDataError(
        f"{root / sub / name}: not found; --data must be ScanObjectNN's h5_files folder (holding {sub}/) "
        "or the folder with the .h5 files themselves"
    )


def load_scanobjectnn(
    root: str | Path, variant: str, split: str, *, min_points: int = 16, limit: int | None = None
) -> PointCloudSet:
    """One ScanObjectNN split of a variant (module doc) -> PointCloudSet (n, 2048, 3), normalised."""
    import h5py

    path = _scanobjectnn_file(Path(root), variant, split)
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise PointCloudDataError(
                    f"{path}: expected datasets 'data' and 'label', found {sorted(f.keys())}"
                )
            data = np.asarray(f["data"][:limit], dtype=np.float64)
            label = np.asarray(f["label"][:limit]).reshape(-1).astype(np.int64)
    except OSError as err:
        raise PointCloudDataError(f"{path}: not a readable HDF5 file ({err})") from None
    if data.ndim != 3:
        raise PointCloudDataError(f"{path}: 'data' has shape {data.shape}, expected (clouds, points, 3)")
    if len(label) != len(data):
        raise PointCloudDataError(f"{path}: {len(data)} clouds but {len(label)} labels")
    for i, cloud in enumerate(data):
        try:
            _check_cloud_array(path, cloud, min_points)
        except PointCloudDataError as err:
            raise PointCloudDataError(f"{err} (cloud {i})") from None
    if label.min() < 0 or label.max() >= len(SCANOBJECTNN_CLASSES):
        raise PointCloudDataError(f"{path}: labels outside 0..{len(SCANOBJECTNN_CLASSES) - 1}")
    pts = np.stack([normalize_cloud(c[:, :3]) for c in data]).astype(np.float32)
    return PointCloudSet(
        torch.from_numpy(pts),
        torch.from_numpy(label),
        list(SCANOBJECTNN_CLASSES),
        f"scanobjectnn-{variant}-{split}",
    )


# -------------------------------------------------------------------------------------- augmentation

AUGMENTATIONS = ("none", "scale_translate", "rotate")


def augment(points: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """points (B, P, 3) -> augmented copy. ``scale_translate``: x·s + t, s ~ U[2/3, 3/2]³, t ~ U[−0.2, 0.2]³
    per cloud; ``rotate``: a random angle about the y (up) axis per cloud; ``none``: unchanged."""
    if kind == "none":
        return points
    B = points.shape[0]
    if kind == "scale_translate":
        s = torch.empty(B, 1, 3).uniform_(2 / 3, 3 / 2, generator=generator)
        t = torch.empty(B, 1, 3).uniform_(-0.2, 0.2, generator=generator)
        return points * s.to(points) + t.to(points)
    if kind == "rotate":
        a = torch.rand(B, generator=generator) * 2 * math.pi
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros(B), torch.ones(B)
        R = torch.stack(
            [torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], 1
        )
        return points @ R.transpose(1, 2).to(points)  # (B, P, 3) @ (B, 3, 3)
    raise ValueError(f"augmentation {kind!r} not in {AUGMENTATIONS}")


# --------------------------------------------------------------------------------------- entry point


def load_pointcloud_data(
    dataset: str = "synthetic",
    path: str | Path | None = None,
    *,
    num_points: int = 256,
    num_classes: int = 8,
    train_size: int = 480,
    test_size: int = 240,
    variant: str = "hardest",
    augmentation: str | None = None,
    min_points: int = 16,
    seed: int = 0,
    limit: int | None = None,
) -> PointCloudData:
    """Build train/test sets. ``dataset``: synthetic | synthetic-local (generated from ``seed``: train from
    seed, test from seed + 10⁶) | modelnet40 | modelnet10 | scanobjectnn (by ``path``). ``augmentation``
    None picks the papers' default per data set (scale_translate for ModelNet, rotate for ScanObjectNN,
    none for the synthetic sets, which already carry random scale and rotation)."""
    info = {
        "dataset": dataset,
        "path": str(Path(path).resolve()) if path else None,
        "num_points": num_points,
        "num_classes": num_classes,
        "train_size": train_size,
        "test_size": test_size,
        "variant": variant,
        "seed": seed,
        "limit": limit,
    }
    if dataset in ("synthetic", "synthetic-local"):
        make = synthetic_shapes if dataset == "synthetic" else synthetic_local
        tr_x, tr_y, names = make(train_size, num_points, num_classes=num_classes, seed=seed)
        te_x, te_y, _ = make(test_size, num_points, num_classes=num_classes, seed=seed + 1_000_000)
        train = PointCloudSet(tr_x, tr_y, names, f"{dataset}-train")
        test = PointCloudSet(te_x, te_y, names, f"{dataset}-test")
        aug = augmentation or "none"
    elif dataset in ("modelnet40", "modelnet10"):
        if path is None:
            raise PointCloudDataError(
                f"{dataset}: --data PATH (the modelnet40_normal_resampled folder) is required"
            )
        cat = int(dataset[len("modelnet") :])
        kw = {"max_points": num_points, "num_category": cat, "min_points": min_points, "limit": limit}
        train, test = load_modelnet40(path, "train", **kw), load_modelnet40(path, "test", **kw)
        names = train.class_names
        aug = augmentation or "scale_translate"
    elif dataset == "scanobjectnn":
        if path is None:
            raise PointCloudDataError(
                "scanobjectnn: --data PATH (ScanObjectNN's h5_files folder) is required"
            )
        train = load_scanobjectnn(path, variant, "train", min_points=min_points, limit=limit)
        test = load_scanobjectnn(path, variant, "test", min_points=min_points, limit=limit)
        names = train.class_names
        aug = augmentation or "rotate"
    else:
        raise PointCloudDataError(
            f"unknown dataset {dataset!r}; choose synthetic, synthetic-local, modelnet40, modelnet10 "
            "or scanobjectnn"
        )
    if aug not in AUGMENTATIONS:
        raise ValueError(f"augmentation {aug!r} not in {AUGMENTATIONS}")
    info["augmentation"] = aug
    return PointCloudData(train, test, names, dataset, aug, info)
