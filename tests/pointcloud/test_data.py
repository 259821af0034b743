"""Point-cloud data: synthetic generators, dataset loaders, malformed files, augmentations."""

import numpy as np
import pytest
import torch

from transmamba.pointcloud.data import (
    LOCAL_FEATURES,
    SHAPES,
    PointCloudDataError,
    augment,
    load_modelnet40,
    load_pointcloud_data,
    load_scanobjectnn,
    read_point_file,
    synthetic_local,
    synthetic_shapes,
)


def test_synthetic_shapes_balanced_normalised_deterministic():
    x, y, names = synthetic_shapes(40, 128, num_classes=8, seed=3)
    assert x.shape == (40, 128, 3) and x.dtype == torch.float32 and names == list(SHAPES)[:8]
    assert torch.bincount(y).tolist() == [5] * 8
    r = x.norm(dim=-1).max(dim=1).values
    assert ((r > 0.95) & (r < 1.06)).all()  # unit sphere + noise σ = 0.01
    x2, y2, _ = synthetic_shapes(40, 128, num_classes=8, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, synthetic_shapes(40, 128, num_classes=8, seed=4)[0])


def test_synthetic_local_shapes():
    x, y, names = synthetic_local(16, 128, num_classes=8, seed=0)
    assert x.shape == (16, 128, 3) and names == list(LOCAL_FEATURES) and torch.isfinite(x).all()


def _write_modelnet(root, clouds: dict[str, np.ndarray], split_ids):
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\n")
    (root / "modelnet40_train.txt").write_text("\n".join(split_ids) + "\n")
    (root / "modelnet40_test.txt").write_text("\n".join(split_ids) + "\n")
    for sid, arr in clouds.items():
        d = root / sid.rsplit("_", 1)[0]
        d.mkdir(exist_ok=True)
        np.savetxt(d / f"{sid}.txt", arr, delimiter=",", fmt="%.6f")


def test_modelnet40_loader(tmp_path):
    rng = np.random.default_rng(0)
    clouds = {"airplane_0001": rng.normal(size=(40, 6)), "bathtub_0001": rng.normal(size=(20, 6))}
    _write_modelnet(tmp_path, clouds, list(clouds))
    s = load_modelnet40(tmp_path, "train", max_points=32, min_points=16)
    assert s.points.shape == (2, 32, 3) and s.labels.tolist() == [0, 1] and s.class_names[1] == "bathtub"
    # the first 32 rows, xyz only, centred and scaled into the unit sphere
    want = clouds["airplane_0001"][:32, :3]
    want = want - want.mean(0)
    np.testing.assert_allclose(s.points[0].numpy(), want / np.linalg.norm(want, axis=1).max(), atol=1e-5)


@pytest.mark.parametrize(
    "rows,match",
    [
        (np.ones((30, 4)), "has 4 columns, expected 6"),
        (np.vstack([np.ones((5, 6)), [[np.nan] * 6], np.ones((24, 6))]), "NaN or inf at point 6"),
        (np.ones((10, 6)), "has 10 points, fewer than the group size K=16"),
    ],
)
def test_malformed_point_file_names_the_file(tmp_path, rows, match):
    _write_modelnet(tmp_path, {"airplane_0007": rows}, ["airplane_0007"])
    with pytest.raises(PointCloudDataError, match=match) as err:
        load_modelnet40(tmp_path, "train", max_points=32, min_points=16)
    msg = str(err.value)
    assert "airplane_0007.txt" in msg and "\n" not in msg


def test_ragged_and_text_rows(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("1,2,3,4,5,6\n1,2,3\n")
    with pytest.raises(PointCloudDataError, match=r"c\.txt: line 2 has 3 columns, line 1 has 6"):
        read_point_file(f)
    f.write_text("1,2,x\n")
    with pytest.raises(PointCloudDataError, match=r"c\.txt: line 1 is not numbers"):
        read_point_file(f)
    with pytest.raises(PointCloudDataError, match="modelnet40_shape_names.txt: not found"):
        load_modelnet40(tmp_path, "train")


def _write_h5(path, data, label):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = label


@pytest.mark.parametrize(
    "variant,sub,stem",
    [
        ("hardest", "main_split", "objectdataset_augmentedrot_scale75"),
        ("objectbg", "main_split", "objectdataset"),
        ("objectonly", "main_split_nobg", "objectdataset"),
    ],
)
def test_scanobjectnn_variants(tmp_path, variant, sub, stem):
    rng = np.random.default_rng(0)
    for split, n in (("training", 6), ("test", 3)):
        _write_h5(
            tmp_path / sub / f"{split}_{stem}.h5", rng.normal(size=(n, 64, 3)).astype("f4"), np.arange(n) % 15
        )
    data = load_pointcloud_data("scanobjectnn", tmp_path, variant=variant, num_points=32)
    assert len(data.train) == 6 and len(data.test) == 3 and data.num_classes == 15
    assert data.augmentation == "rotate"
    pts, y = next(data.train.batches(4, num_points=32, shuffle=True, resample=True, augmentation="rotate"))
    assert pts.shape == (4, 32, 3) and y.shape == (4,)


def test_scanobjectnn_malformed(tmp_path):
    bad = np.zeros((2, 64, 3), dtype="f4")
    bad[1, 5, 0] = np.nan
    _write_h5(tmp_path / "main_split" / "training_objectdataset.h5", bad, np.array([0, 1]))
    with pytest.raises(PointCloudDataError, match=r"training_objectdataset\.h5: NaN .* \(cloud 1\)"):
        load_scanobjectnn(tmp_path, "objectbg", "train")
    _write_h5(
        tmp_path / "main_split" / "training_objectdataset.h5", np.zeros((2, 8, 3), "f4"), np.array([0, 1])
    )
    with pytest.raises(PointCloudDataError, match="has 8 points, fewer than the group size K=16"):
        load_scanobjectnn(tmp_path, "objectbg", "train", min_points=16)
    with pytest.raises(PointCloudDataError, match="test_objectdataset.h5: not found"):
        load_scanobjectnn(tmp_path, "objectbg", "test")


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 3)
    r = augment(x, "rotate", g)
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
    torch.testing.assert_close(r[..., 1], x[..., 1])  # ... about the y (up) axis
    s = augment(x, "scale_translate", g)
    ratio = (s[:, 1:] - s[:, :1]) / (x[:, 1:] - x[:, :1])  # per-axis scale, translation cancels
    assert ((ratio > 2 / 3 - 1e-4) & (ratio < 1.5 + 1e-4)).all()
    assert augment(x, "none") is x
    with pytest.raises(ValueError, match="augmentation"):
        augment(x, "flip")
