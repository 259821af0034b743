"""FPS and kNN against brute-force references on random clouds; chunking must not change results."""

import pytest
import torch

from transmamba.pointcloud.ops import (
    farthest_point_sample,
    fps_reference,
    group_points,
    index_points,
    knn,
    knn_reference,
)

# Random continuous clouds have no exact distance ties, so the fp32 fast paths and the fp64 references must
# pick identical indices: a near-tie closer than fp32 rounding (~1e-7 relative) has probability ~1e-5 per
# comparison at these sizes, and the seeds below are fixed.


@pytest.mark.parametrize("b,n,m", [(1, 50, 10), (3, 200, 32), (2, 129, 129)])
def test_fps_matches_reference(b, n, m):
    x = torch.randn(b, n, 3)
    assert torch.equal(farthest_point_sample(x, m), fps_reference(x, m))


def test_fps_start_and_spread():
    x = torch.randn(2, 100, 3)
    idx = farthest_point_sample(x, 20, start=torch.tensor([5, 7]))
    assert idx[:, 0].tolist() == [5, 7]
    assert torch.equal(idx[0], fps_reference(x[:1], 20, start=5)[0])
    assert all(len(set(r.tolist())) == 20 for r in idx)  # distinct centres


@pytest.mark.parametrize("b,m,n,k", [(2, 16, 100, 8), (1, 40, 300, 16), (3, 5, 16, 16)])
def test_knn_matches_reference(b, m, n, k):
    q, r = torch.randn(b, m, 3), torch.randn(b, n, 3)
    d, idx = knn(q, r, k)
    assert torch.equal(idx, knn_reference(q, r, k))
    # distances are the squared Euclidean ones of the chosen points, nearest first
    want = ((q.unsqueeze(2) - index_points(r, idx)) ** 2).sum(-1)
    torch.testing.assert_close(d, want)
    assert (d[..., 1:] >= d[..., :-1]).all()


def test_knn_chunked_equals_single_block():
    q, r = torch.randn(2, 333, 3), torch.randn(2, 500, 3)
    d1, i1 = knn(q, r, 16)
    d2, i2 = knn(q, r, 16, max_elements=2 * 500 * 7)  # 7 queries per chunk, ragged last chunk
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_group_points_shapes_and_relative_coords():
    x = torch.randn(2, 256, 3)
    hood, centres, idx = group_points(x, 32, 16)
    assert hood.shape == (2, 32, 16, 3) and centres.shape == (2, 32, 3) and idx.shape == (2, 32, 16)
    # the nearest neighbour of a centre is the centre itself: relative coordinate 0
    assert torch.equal(hood[:, :, 0], torch.zeros(2, 32, 3))
    torch.testing.assert_close(hood + centres.unsqueeze(2), index_points(x, idx))


def test_bad_sizes_raise():
    x = torch.randn(1, 10, 3)
    with pytest.raises(ValueError, match="m <= points"):
        farthest_point_sample(x, 11)
    with pytest.raises(ValueError, match="k <= reference"):
        knn(x, x, 11)
    with pytest.raises(ValueError, match="too small"):
        group_points(x, 4, 16)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    x = torch.randn(2, 2048, 3)
    i_cpu = farthest_point_sample(x, 128)
    i_gpu = farthest_point_sample(x.cuda(), 128).cpu()
    assert torch.equal(i_cpu, i_gpu)
    c = index_points(x, i_cpu)
    _, k_cpu = knn(c, x, 16)
    _, k_gpu = knn(c.cuda(), x.cuda(), 16, max_elements=2 * 2048 * 10)
    assert torch.equal(k_cpu, k_gpu.cpu())
