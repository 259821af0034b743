"""Point-cloud ops in plain batched torch (CPU and CUDA, no compiled extension).

Farthest point sampling (FPS) of m centres from a cloud x (n points):

    c_0 = start (index 0 unless given),   d_i = |x_i − x_{c_0}|²
    c_j = argmax_i d_i,                   d_i ← min(d_i, |x_i − x_{c_j}|²)         j = 1 … m−1

Memory O(b·n) (one running distance per point), time O(m·n·b): no n×n matrix. Ties in the argmax go to the
lowest index (``torch.argmax`` returns the first maximum).

k nearest neighbours of each query q among reference points r, by squared Euclidean distance
``|q − r|² = Σ_c (q_c − r_c)²`` computed as a difference (not as |q|² + |r|² − 2 q·r, whose cancellation can
swap near neighbours), returned nearest first. The (b, m, n) distance block is computed ``chunk`` queries
at a time, so peak memory is O(b · chunk · n) instead of O(b · m · n): for m ~ n (large clouds, many groups)
that is the difference between a few MB and an n² blow-up. The chunk is picked from an element budget
(``max_elements``), the same on CPU and GPU; a single chunk when the block fits.

``group_points`` = FPS centres + kNN neighbourhoods with coordinates relative to their centre, the grouping
step of Point-BERT / PointMAE / PoinTramba.
"""

from __future__ import annotations

import torch

__all__ = [
    "farthest_point_sample",
    "knn",
    "index_points",
    "group_points",
    "fps_reference",
    "knn_reference",
]

# (b · chunk · n) distance elements per kNN chunk: 2**24 floats = 64 MiB (x3 for the coordinate differences).
DEFAULT_MAX_ELEMENTS = 1 << 24


def _check_cloud(op: str, name: str, x: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] < 1:
        raise ValueError(f"{op}: {name} must be (batch, points, channels), got {tuple(x.shape)}")


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather rows per batch: points (b, n, c), idx (b, *s) long -> (b, *s, c)."""
    b, _, c = points.shape
    flat = idx.reshape(b, -1)  # (b, S)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, c))  # (b, S, c)
    return out.reshape(*idx.shape, c)


def farthest_point_sample(xyz: torch.Tensor, m: int, start: torch.Tensor | int | None = None) -> torch.Tensor:
    """Indices (b, m) of m farthest-point-sampled centres of xyz (b, n, 3) (module doc).

    ``start``: index of the first centre, an int or a (b,) long tensor; default 0 (as pointnet2's kernel).
    """
    _check_cloud("farthest_point_sample", "xyz", xyz)
    b, n, _ = xyz.shape
    if not 1 <= m <= n:
        raise ValueError(f"farthest_point_sample: need 1 <= m <= points, got m={m} for {n} points")
    device = xyz.device
    x = xyz.float()
    if start is None:
        start = 0
    cur = (
        torch.full((b,), int(start), dtype=torch.long, device=device)
        if isinstance(start, int)
        else start.to(device=device, dtype=torch.long).reshape(b)
    )
    idx = torch.empty(b, m, dtype=torch.long, device=device)
    dist = torch.full((b, n), float("inf"), device=device)  # (b, n) squared distance to the chosen set
    rows = torch.arange(b, device=device)
    for j in range(m):
        idx[:, j] = cur
        c = x[rows, cur]  # (b, 3)
        dist = torch.minimum(dist, ((x - c[:, None, :]) ** 2).sum(-1))
        cur = dist.argmax(dim=1)
    return idx


def knn(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours (module doc): query (b, m, 3), ref (b, n, 3) -> (dist² (b, m, k), idx (b, m, k)).

    Nearest first. Queries are processed in chunks of ``max(1, max_elements // (b·n))`` so the distance block
    never exceeds ``max_elements`` entries (per chunk) whatever m and n are.
    """
    _check_cloud("knn", "query", query)
    _check_cloud("knn", "ref", ref)
    b, m, _ = query.shape
    n = ref.shape[1]
    if ref.shape[0] != b or ref.shape[2] != query.shape[2]:
        raise ValueError(f"knn: query {tuple(query.shape)} and ref {tuple(ref.shape)} do not match")
    if not 1 <= k <= n:
        raise ValueError(f"knn: need 1 <= k <= reference points, got k={k} for {n} points")
    chunk = max(1, int(max_elements) // max(1, b * n))
    q, r = query.float(), ref.float()
    dists, idxs = [], []
    for s in range(0, m, chunk):
        d = ((q[:, s : s + chunk, None, :] - r[:, None, :, :]) ** 2).sum(-1)  # (b, c, n)
        dk, ik = torch.topk(d, k, dim=-1, largest=False, sorted=True)  # (b, c, k)
        dists.append(dk)
        idxs.append(ik)
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def group_points(
    xyz: torch.Tensor,
    num_groups: int,
    group_size: int,
    *,
    start: torch.Tensor | int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FPS + kNN grouping: xyz (b, n, 3) -> (neighbourhoods (b, G, K, 3) relative to their centre,
    centres (b, G, 3), neighbour indices (b, G, K)). Groups come in FPS order."""
    _check_cloud("group_points", "xyz", xyz)
    n = xyz.shape[1]
    if group_size > n or num_groups > n:
        raise ValueError(
            f"group_points: a cloud of {n} points is too small for {num_groups} groups of {group_size} "
            "(need at least max(groups, group size) points)"
        )
    centre_idx = farthest_point_sample(xyz, num_groups, start)  # (b, G)
    centres = index_points(xyz, centre_idx)  # (b, G, 3)
    _, nbr = knn(centres, xyz, group_size, max_elements=max_elements)  # (b, G, K)
    hood = index_points(xyz, nbr) - centres.unsqueeze(2)  # (b, G, K, 3)
    return hood, centres, nbr


# ------------------------------------------------------------------------------- brute-force references


def fps_reference(xyz: torch.Tensor, m: int, start: int = 0) -> torch.Tensor:
    """FPS by its definition on the full pairwise distance matrix (float64), one cloud at a time:
    each new centre is the point whose distance to its nearest chosen centre is largest (lowest index on
    ties). xyz (b, n, 3) -> (b, m)."""
    out = []
    for cloud in xyz.double():
        d = torch.cdist(cloud, cloud, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n)
        chosen = [start]
        for _ in range(m - 1):
            near = d[:, chosen].min(dim=1).values  # distance to the chosen set
            chosen.append(int(torch.argmax(near)))
        out.append(torch.tensor(chosen))
    return torch.stack(out)


def knn_reference(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """kNN by sorting every distance (float64, stable sort): (b, m, 3), (b, n, 3) -> idx (b, m, k)."""
    d = torch.cdist(query.double(), ref.double(), compute_mode="donot_use_mm_for_euclid_dist")  # (b, m, n)
    return torch.sort(d, dim=-1, stable=True).indices[..., :k]
