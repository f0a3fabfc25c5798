"""Real-data loaders (issue 4): formats written by the tests themselves, plus the real NYU frame.

Scenes are spheres ("blobs") of known centres ray-cast into the frame by the test; a joint label is on
its blob when the crop depth at the joint's crop pixel equals the sphere's front surface depth.
"""
from __future__ import annotations

import logging
import shutil
import struct

import cv2
import numpy as np
import pytest
import torch

from config import make_config
from datasets import build_dataset
from datasets.centers import CENTER_CONVENTIONS, load_centers
from datasets.common import carve_validation, mirror_frame, mirror_uvd, uvd_px_to_xyz
from datasets.depth_io import (DatasetError, read_depth, read_msra_bin, read_nyu_depth, read_png16,
                               write_msra_bin, write_nyu_depth, write_png16)
from datasets.joints import NYU_EVAL_IDS_36
from datasets.nyu import write_nyu_split
from render.camera import crop_transform, norm_to_crop_px, project, uvd_norm_to_xyz_norm

NYU_K = np.array([[588.03, 0, 320.0], [0, 587.07, 240.0], [0, 0, 1]])
ICVL_K = np.array([[240.99, 0, 160.0], [0, 240.96, 120.0], [0, 0, 1]])
MSRA_K = np.array([[241.42, 0, 160.0], [0, 241.42, 120.0], [0, 0, 1]])
RADIUS = 12.0
ITEM_KEYS = {"depth", "center", "cube", "M", "K", "index"}


def blob_frame(K: np.ndarray, centers: np.ndarray, hw: tuple[int, int], background: float = 0.0) -> np.ndarray:
    """Ray-cast spheres of radius RADIUS (mm) centred at `centers` (J, 3) -> depth (H, W) mm."""
    H, W = hw
    r, c = np.mgrid[0:H, 0:W].astype(np.float64)
    d = np.stack([(c - K[0, 2]) / K[0, 0], (r - K[1, 2]) / K[1, 1], np.ones_like(r)], -1)
    dd, out = (d * d).sum(-1), np.full((H, W), np.inf)
    for P in centers:
        b = d @ P
        disc = b * b - dd * (P @ P - RADIUS ** 2)
        z = (b - np.sqrt(np.maximum(disc, 0.0))) / dd
        out = np.where((disc >= 0) & (z < out), z, out)
    out[np.isinf(out)] = background
    return out


def blob_joints(n: int, center: np.ndarray, spacing: float = 33.0, step: float = 8.0) -> np.ndarray:
    """n joint positions on a 4-wide grid around `center`, depth stepping `step` mm per joint (n, 3)."""
    k = np.arange(n)
    grid = np.stack([(k % 4 - 1.5) * spacing, (k // 4 - 1.5) * spacing, step * (k - n / 2)], -1)
    return center + grid


def assert_on_blobs(item: dict, joints_mm: np.ndarray, tol: float = 2.5) -> None:
    """Crop depth at each joint's crop pixel is its blob's front surface; labels agree with the mm joints."""
    C, b = item["center"].double(), item["cube"].double()
    uv = norm_to_crop_px(item["joints_uvd"][:, :2].double())
    assert (item["joints_uvd"][:, :2].abs() < 1).all()
    idx = torch.floor(uv + 0.5).long()
    surface = C[2] + item["depth"][0][idx[:, 1], idx[:, 0]].double() * b[2] / 2
    expected = torch.as_tensor(joints_mm[:, 2]) - RADIUS
    assert torch.allclose(surface, expected, atol=tol), (surface - expected)
    label_z = C[2] + item["joints_uvd"][:, 2].double() * b[2] / 2
    assert torch.allclose(label_z, torch.as_tensor(joints_mm[:, 2]), atol=1e-3)


# ---- NYU fixtures ---------------------------------------------------------------------------------
NYU_N = {"train": 8, "test": 4}


def nyu_joints(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene i: (joints36 (36, 3) mm y-down, refined centre (3,) mm)."""
    center = np.array([-60.0 + 10 * i, 30.0 - 5 * i, 650.0 + 15 * i])
    j36 = np.repeat(center[None], 36, 0)
    j36[list(NYU_EVAL_IDS_36)] = blob_joints(14, center)
    return j36, center + np.array([3.0, -4.0, 5.0])


def nyu_scene(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame i: (depth (480, 640) mm, joints36 (36, 3) mm y-down, centre (3,) mm)."""
    j36, c = nyu_joints(i)
    return blob_frame(NYU_K, j36[list(NYU_EVAL_IDS_36)], (480, 640), background=2001.0), j36, c


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    for split, n in NYU_N.items():
        scenes = [nyu_scene(i + (0 if split == "train" else 20)) for i in range(n)]
        write_nyu_split(root, split, np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes]),
                        np.stack([s[2] for s in scenes]))
    return root


def nyu_cfg(root, **kw):
    return make_config(dataset="nyu", data_root=str(root), **kw)


# ---- formats ----------------------------------------------------------------------------------------
def test_depth_formats_round_trip(tmp_path):
    d = np.array([[0, 1, 255, 256], [731, 2001, 40000, 65535]], dtype=np.float64)
    write_nyu_depth(tmp_path / "a.png", d)
    raw = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)  # BGR
    assert raw.dtype == np.uint8 and (raw[..., 2] == 0).all()
    assert int(raw[1, 1, 1]) * 256 + int(raw[1, 1, 0]) == 2001 and raw[0, 3, 1] == 1 and raw[0, 3, 0] == 0
    assert np.array_equal(read_nyu_depth(tmp_path / "a.png"), d) and np.array_equal(read_depth(tmp_path / "a.png"), d)
    cv2.imwrite(str(tmp_path / "b.png"), d.astype(np.uint16))
    assert np.array_equal(read_png16(tmp_path / "b.png"), d) and np.array_equal(read_depth(tmp_path / "b.png"), d)
    box = np.arange(6, dtype=np.float32).reshape(2, 3) + 500.5  # MSRA .bin written by hand: box cols 4..6, rows 2..3
    (tmp_path / "c.bin").write_bytes(struct.pack("<6i", 10, 5, 4, 2, 7, 4) + box.tobytes())
    full = read_msra_bin(tmp_path / "c.bin")
    assert full.shape == (5, 10) and np.array_equal(full[2:4, 4:7], box) and full.sum() == box.sum()
    write_msra_bin(tmp_path / "d.bin", full)
    assert struct.unpack("<6i", (tmp_path / "d.bin").read_bytes()[:24]) == (10, 5, 4, 2, 7, 4)
    assert np.array_equal(read_depth(tmp_path / "d.bin"), full)


def test_real_nyu_png(shared_data):
    f = read_nyu_depth(shared_data / "nyu_real" / "depth_1_0000001.png")
    assert f.shape == (480, 640) and f.min() == 731 and f.max() == 2001  # datasets.md 9.3
    assert abs((f == 2001).mean() - 0.61) < 0.005 and f[269, 210] == 754 and f[250, 217] == 752


def test_bad_files_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    for fn in (read_nyu_depth, read_png16, read_depth):
        with pytest.raises(DatasetError, match="bad.png"):
            fn(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="missing.png"):
        read_nyu_depth(tmp_path / "missing.png")
    (tmp_path / "t.bin").write_bytes(struct.pack("<6i", 320, 240, 0, 0, 100, 100) + b"\0" * 40)
    with pytest.raises(DatasetError, match="t.bin.*truncated"):
        read_msra_bin(tmp_path / "t.bin")


def test_center_files(tmp_path, shared_data, caplog):
    K = torch.as_tensor(NYU_K)
    c, valid = load_centers(shared_data / "centers/nyu/center_test_refined.txt", CENTER_CONVENTIONS["nyu"], NYU_K, 640, 480)
    assert valid.all() and len(c) == 8252 and np.allclose(c[0], [-133.28715515137, 12.867971420288, 761.99810791016])
    assert np.allclose(project(torch.as_tensor(c[:1]), K)[0, :2].numpy(), [217.143, 249.914], atol=1e-3)
    uvd = project(torch.as_tensor(c), K).numpy()  # uvd variant of the whole file, told apart by value ranges
    (tmp_path / "uvd.txt").write_text("".join(f"{u:.3f} {v:.3f} {d:.3f}\n" for u, v, d in uvd))
    cu, _ = load_centers(tmp_path / "uvd.txt", CENTER_CONVENTIONS["nyu"], NYU_K, 640, 480)
    assert np.abs(cu - c).max() < 5e-3
    (tmp_path / "one.txt").write_text("217.143 249.914 761.998\n")  # fits both readings: explicit format
    cu, _ = load_centers(tmp_path / "one.txt", CENTER_CONVENTIONS["nyu"], NYU_K, 640, 480, fmt="uvd")
    assert np.allclose(cu[0], c[0], atol=2e-3)
    (tmp_path / "inv.txt").write_text("10 -20 300\r\ninvalid\r\n-5 7 400\r\n\r\n")
    with caplog.at_level(logging.WARNING):
        ci, vi = load_centers(tmp_path / "inv.txt", CENTER_CONVENTIONS["msra"], MSRA_K, 320, 240)
    assert vi.tolist() == [True, False, True] and "1 'invalid'" in caplog.text
    assert np.allclose(ci[[0, 2]], [[10, 20, 300], [-5, -7, 400]])  # MSRA centres: y-up, z positive
    p = np.array([[40.0, -25.0, 380.0]])  # ICVL: y-down xyz made with f = 241.42 (datasets.md 1.1)
    uv_src = p[0, :2] * 241.42 / p[0, 2] + [160, 120]
    (tmp_path / "icvl.txt").write_text("40 -25 380\n")
    cc, _ = load_centers(tmp_path / "icvl.txt", CENTER_CONVENTIONS["icvl"], ICVL_K, 320, 240)
    assert np.allclose(project(torch.as_tensor(cc), torch.as_tensor(ICVL_K))[0, :2].numpy(), uv_src, atol=1e-9)
    assert cc[0, 2] == 380.0


def test_t19_positive_fy_equals_scorer(shared_data):
    gt = np.loadtxt(shared_data / "eval/nyu/nyu_test_groundtruth_label.txt", max_rows=300).reshape(-1, 14, 3)
    pr = np.loadtxt(shared_data / "eval/nyu/CVPR19_NYU_CrossInfoNet.txt", max_rows=300).reshape(-1, 14, 3)

    def scorer_xyz(uvd):  # the public scorer's formula with f_y = -587.07 (datasets.md 7.2)
        return np.stack([(uvd[..., 0] - 320) * uvd[..., 2] / 588.03, (uvd[..., 1] - 240) * uvd[..., 2] / -587.07,
                         uvd[..., 2]], -1)
    ours = np.linalg.norm(uvd_px_to_xyz(gt, NYU_K) - uvd_px_to_xyz(pr, NYU_K), axis=-1)
    theirs = np.linalg.norm(scorer_xyz(gt) - scorer_xyz(pr), axis=-1)
    assert np.allclose(ours, theirs, rtol=0, atol=1e-9) and 5 < ours.mean() < 30


# ---- the real NYU frame (T3) --------------------------------------------------------------------------
def test_t3_real_nyu_frame(tmp_path, shared_data):
    frame = read_nyu_depth(shared_data / "nyu_real/depth_1_0000001.png")
    line = (shared_data / "centers/nyu/center_test_refined.txt").read_text().splitlines()[0].split()
    center = np.array([float(line[0]), -float(line[1]), float(line[2])])
    gt_uvd = np.loadtxt(shared_data / "eval/nyu/nyu_test_groundtruth_label.txt", max_rows=1).reshape(14, 3)
    gt = uvd_px_to_xyz(gt_uvd, NYU_K)
    j36 = np.repeat(gt[13:14], 36, 0)
    j36[list(NYU_EVAL_IDS_36)] = gt
    write_nyu_split(tmp_path, "test", frame[None], j36[None], center[None])
    item = build_dataset(nyu_cfg(tmp_path), "test", labels=True)[0]
    A = crop_transform(torch.as_tensor(center), torch.full((3,), 250.0, dtype=torch.float64),
                       torch.as_tensor(NYU_K)).numpy()
    assert np.allclose(item["M"].numpy(), A, atol=1e-4) and int(item["index"]) == 0
    Ainv = np.linalg.inv(A)
    expected = np.empty((128, 128))
    for r in range(128):
        for c in range(128):
            u, v, _ = Ainv @ [c, r, 1.0]
            fr, fc = int(np.floor(v + 0.5)), int(np.floor(u + 0.5))
            z = frame[fr, fc] if (0 <= fr < 480 and 0 <= fc < 640) else 0.0
            expected[r, c] = 1.0 if (z == 0 or z > center[2] + 125) else max((z - center[2]) / 125, -1.0)
    assert np.allclose(item["depth"][0].numpy(), expected, atol=1e-6)
    assert (item["depth"] < 0.99).float().mean() > 0.05
    uvd = item["joints_uvd"].double()
    assert (uvd[:, :2].abs() <= 1).all()
    idx = torch.floor(norm_to_crop_px(uvd[:, :2]) + 0.5).long()
    surf = center[2] + item["depth"][0][idx[:, 1], idx[:, 0]].double().numpy() * 125
    assert (item["depth"][0][idx[:, 1], idx[:, 0]] < 0.99).all()  # every joint's pixel is hand
    assert np.all((gt[:, 2] - surf > -5) & (gt[:, 2] - surf < 45))  # published: label 2.6-32.8 mm behind the surface
    xyz_mm = item["joints_xyz"].double().numpy() * 125 + center
    assert np.allclose(xyz_mm, gt, atol=1e-3)


# ---- NYU format loader -----------------------------------------------------------------------------
def test_nyu_items_labels_and_cubes(nyu_root):
    cfg = nyu_cfg(nyu_root, nyu_subject2_first_index=2)
    ds = build_dataset(cfg, "test", labels=True)
    assert len(ds) == 4
    for i in range(4):
        item = ds[i]
        assert set(item) == ITEM_KEYS | {"joints_uvd", "joints_xyz"}
        assert item["depth"].shape == (1, 128, 128) and item["depth"].dtype == torch.float32
        assert item["joints_uvd"].shape == (14, 3) and item["M"].shape == (3, 3) and int(item["index"]) == i
        j36, c = nyu_joints(20 + i)
        assert np.allclose(item["center"].numpy(), c, atol=1e-4)
        assert np.allclose(item["cube"].numpy(), 250.0 * (5 / 6 if i >= 2 else 1.0))  # subject-2 cube rule
        assert_on_blobs(item, j36[list(NYU_EVAL_IDS_36)])


def test_nyu_val_carved_from_train(nyu_root):
    cfg = nyu_cfg(nyu_root, val_fraction=0.25)
    tr, va = build_dataset(cfg, "train", False), build_dataset(cfg, "val", False)
    ids_tr, ids_va = [int(tr[i]["index"]) for i in range(len(tr))], [int(va[i]["index"]) for i in range(len(va))]
    assert sorted(ids_tr + ids_va) == list(range(8)) and len(ids_va) == 2 and not set(ids_tr) & set(ids_va)
    assert [int(build_dataset(cfg, "val", False)[i]["index"]) for i in range(2)] == ids_va
    a, b = carve_validation(10_000, 0.05)
    assert len(b) == 500 and len(np.intersect1d(a, b)) == 0 and b.min() > 0 and b.max() < 9_999


def test_augmentation_moves_labels_with_image(nyu_root):
    cfg = nyu_cfg(nyu_root, val_fraction=0.0)
    ds = build_dataset(cfg, "train", labels=True)
    plain = build_dataset(nyu_cfg(nyu_root, val_fraction=0.0, augment=False), "train", labels=True)
    torch.manual_seed(3)
    seen = set()
    for k in range(32):
        i = k % len(ds)
        item, ref = ds[i], plain[i]
        j36, _ = nyu_joints(i)
        assert_on_blobs(item, j36[list(NYU_EVAL_IDS_36)])
        C, b, Kc = item["center"].double(), item["cube"].double(), item["M"].double() @ item["K"].double()
        assert torch.allclose(uvd_norm_to_xyz_norm(item["joints_uvd"].double(), C, b, Kc), item["joints_xyz"].double(),
                              atol=1e-5)  # xyz follows rule 1.3 from the (rotated) uvd
        if not torch.equal(item["center"], ref["center"]):
            seen.add("com")
        elif not torch.equal(item["cube"], ref["cube"]):
            seen.add("sc")
        elif not torch.equal(item["depth"], ref["depth"]):
            seen.add("rot")
            assert torch.equal(item["M"], ref["M"])  # rot keeps A
            assert not torch.allclose(item["joints_uvd"][:, :2], ref["joints_uvd"][:, :2])
            assert torch.allclose(item["joints_uvd"][:, :2].norm(dim=-1), ref["joints_uvd"][:, :2].norm(dim=-1), atol=1e-5)
        else:
            seen.add("none")
    assert seen == {"com", "sc", "rot", "none"}
    torch.manual_seed(3)
    a = [build_dataset(cfg, "train", True)[i]["joints_uvd"] for i in range(4)]
    torch.manual_seed(3)
    b = [build_dataset(cfg, "train", True)[i]["joints_uvd"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible under a seeded run


def test_augmentation_is_per_item_and_epoch_not_per_worker(nyu_root):
    """A crop depends on (seed, epoch, item) only: the same with 0 or 2 workers and in any order, so a
    resumed run reads the same crops; it differs between epochs and between seeds."""
    ds = build_dataset(nyu_cfg(nyu_root, val_fraction=0.0, max_frames=4), "train", labels=True)

    def labels(epoch, seed=0, workers=0, order=(0, 1, 2, 3)):
        ds.set_epoch(epoch, seed)
        dl = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers, sampler=list(order))
        got = {i: b["joints_uvd"][0] for i, b in zip(order, dl)}
        return torch.stack([got[i] for i in range(4)])
    base = labels(1)
    assert torch.equal(base, labels(1, workers=2)) and torch.equal(base, labels(1, order=(3, 1, 0, 2)))
    assert not torch.equal(base, labels(2)) and not torch.equal(base, labels(1, seed=5))


def test_labels_false_never_reads_labels(nyu_root, tmp_path, monkeypatch):
    root = tmp_path / "nyu"
    shutil.copytree(nyu_root, root)
    for split in ("train", "test"):
        (root / split / "joint_data.mat").unlink()
        (root / split / "joint_data.mat").mkdir()  # any open() of it fails

    def boom(*a, **k):
        raise AssertionError("label file read with labels=False")
    monkeypatch.setattr("scipy.io.loadmat", boom)
    monkeypatch.setattr("datasets.nyu.read_joint_data", boom)
    for split in ("train", "val", "test"):
        ds = build_dataset(nyu_cfg(root, val_fraction=0.25), split, labels=False)
        assert set(ds[0]) == ITEM_KEYS
    with pytest.raises(AssertionError, match="label file read"):
        build_dataset(nyu_cfg(root), "test", labels=True)


def test_nyu_views_and_invalid_centres(tmp_path, caplog):
    scenes = [nyu_scene(i) for i in range(3)]
    frames, j36, cs = (np.stack([s[k] for s in scenes]) for k in range(3))
    write_nyu_split(tmp_path, "train", frames, j36, cs, view=2)  # DSF per-view centre file, y-down
    assert (tmp_path / "train" / "center_train_1_refined.txt").is_file()
    ds = build_dataset(nyu_cfg(tmp_path, nyu_view=2, val_fraction=0.0, augment=False), "train", True)
    assert len(ds) == 3 and np.allclose(ds[1]["center"].numpy(), cs[1], atol=1e-4)
    assert_on_blobs(ds[2], j36[2][list(NYU_EVAL_IDS_36)])
    cs[1] = np.nan
    write_nyu_split(tmp_path, "test", frames, j36, cs)
    assert (tmp_path / "test" / "center_test_refined.txt").read_text().splitlines()[1] == "invalid"
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(nyu_cfg(tmp_path), "test", True)
    assert [int(ds[i]["index"]) for i in range(len(ds))] == [0, 2] and "1 of 3 frames skipped" in caplog.text
    assert_on_blobs(ds[1], j36[2][list(NYU_EVAL_IDS_36)])


def test_nyu_bad_data(nyu_root, tmp_path, caplog):
    with pytest.raises(DatasetError) as e:
        build_dataset(nyu_cfg(tmp_path / "nowhere"), "train", False)
    assert "depth_1_0000001.png" in str(e.value) and "center_train_refined.txt" in str(e.value) and "test/" in str(e.value)
    root = tmp_path / "nyu"
    shutil.copytree(nyu_root, root)
    (root / "test" / "depth_1_0000002.png").write_bytes(b"\x89PNG garbage")
    write_nyu_depth(root / "test" / "depth_1_0000003.png", np.full((480, 640), 2001.0))  # no hand in the crop
    ds = build_dataset(nyu_cfg(root, nyu_subject2_first_index=99), "test", False)
    with pytest.raises(DatasetError, match="depth_1_0000002.png"):
        ds[1]
    with caplog.at_level(logging.WARNING):
        ds[2]
    assert "no hand pixel" in caplog.text and "[2]" in caplog.text and ds.empty_ids == [2]
    (root / "test" / "depth_1_0000002.png").unlink()
    assert build_dataset(nyu_cfg(root), "test", False).scan_empty() == [2]
    write_nyu_depth(root / "test" / "depth_1_0000004.png", np.zeros((240, 320)))
    with pytest.raises(DatasetError, match="depth_1_0000004.png.*320x240"):
        build_dataset(nyu_cfg(root), "test", False)[2]


# ---- ICVL (mirrored) and MSRA -----------------------------------------------------------------------
def write_icvl(root, cr: bytes = b" \r\r\n") -> dict:
    """Two original training captures, one rotated-copy folder (excluded), two test sequences."""
    out = {}
    layout = {("Training", "201403121135", 0): "train", ("Training", "201403121140", 1): "train",
              ("Training", "111", 2): "train", ("Testing", "test_seq_1", 3): "test", ("Testing", "test_seq_2", 4): "test"}
    lines = {"train": [], "test_seq_1": [], "test_seq_2": []}
    centers = {"train": [], "test": []}
    for (top, folder, i), split in layout.items():
        c = np.array([-50.0 + 25 * i, 10.0 - 8 * i, 330.0 + 10 * i])  # left of the axis: mirroring matters
        j = blob_joints(16, c, spacing=24.0)
        (root / top / "Depth" / folder).mkdir(parents=True, exist_ok=True)
        write_png16(root / top / "Depth" / folder / "image_0000.png", blob_frame(ICVL_K, j, (240, 320)))
        uvd = project(torch.as_tensor(j), torch.as_tensor(ICVL_K)).numpy()
        key = "train" if split == "train" else folder
        lines[key].append(f"{folder}/image_0000.png " + " ".join(f"{v:.3f}" for v in uvd.ravel()))
        if len(folder) != 3:
            out[f"{folder}/image_0000.png"] = j
            src = project(torch.as_tensor(c[None]), torch.as_tensor(ICVL_K))  # V2V file: made with f = 241.42
            cs = (src[0, :2].numpy() - [160, 120]) * c[2] / 241.42
            centers[split].append(f"{cs[0]} {cs[1]} {c[2]}")
    (root / "Training" / "labels.txt").write_bytes(cr.join(s.encode() for s in lines["train"]) + cr)
    for s in ("test_seq_1", "test_seq_2"):
        (root / "Testing" / f"{s}.txt").write_bytes(cr.join(x.encode() for x in lines[s]) + cr)
    (root / "Training" / "center_train_refined.txt").write_text("\n".join(centers["train"]) + "\n")
    (root / "Testing" / "center_test_refined.txt").write_text("\n".join(centers["test"]) + "\n")
    return out


def test_icvl_mirrored_loader(tmp_path, monkeypatch):
    joints = write_icvl(tmp_path)
    cfg = make_config(dataset="icvl", data_root=str(tmp_path), val_fraction=0.0)
    assert cfg.mirror
    tr, te = build_dataset(cfg, "train", True), build_dataset(cfg, "test", True)
    assert len(tr) == 2 and len(te) == 2  # rotated-copy folder '111' excluded
    for ds, names in ((tr, ["201403121135", "201403121140"]), (te, ["test_seq_1", "test_seq_2"])):
        for i, n in enumerate(names):
            item = ds[i]
            j = joints[f"{n}/image_0000.png"].copy()
            j[:, 0] = -j[:, 0]  # the right-hand image is the 3-D reflection x -> -x
            assert_on_blobs(item, j, tol=3.0)
            uv = project(torch.as_tensor(j), torch.as_tensor(ICVL_K))[:, :2].numpy()
            back = mirror_uvd(np.c_[uv, j[:, 2]], 160.0)  # un-mirroring restores the file's labels
            assert np.allclose(back[:, 0], 2 * 160.0 - uv[:, 0])
    monkeypatch.setattr("datasets.icvl.read_labels", lambda *a: (_ for _ in ()).throw(AssertionError("labels read")))
    assert set(build_dataset(cfg, "test", False)[0]) == ITEM_KEYS


def test_mirror_round_trip():
    rng = np.random.default_rng(0)
    f = rng.uniform(300, 600, (240, 320))
    m = mirror_frame(f, 160.0)
    assert np.array_equal(m[:, 1:], f[:, 1:][:, ::-1]) and (m[:, 0] == 0).all()  # column c <- 320 - c
    assert np.array_equal(mirror_frame(m, 160.0)[:, 1:], f[:, 1:])
    uvd = rng.uniform(0, 300, (16, 3))
    assert np.allclose(mirror_uvd(mirror_uvd(uvd, 160.0), 160.0), uvd)
    assert np.allclose(mirror_uvd(uvd, 160.0)[:, 0], 320.0 - uvd[:, 0])


def write_msra(root, test_subject: int = 0) -> dict:
    """One frame per subject (gesture '1'), P2/TIP with 176 frames (172-174 faulty), empty other gestures."""
    from datasets.msra import GESTURES
    truth, center_lines = {}, {"train": [], "test": []}
    for s in range(9):
        for g in GESTURES:
            (root / f"P{s}" / g).mkdir(parents=True)
            n = 176 if (s, g) == (2, "TIP") else (1 if g == "1" else 0)
            c = np.array([20.0 * s - 80, 15.0, 300.0 + 10 * s])
            j = blob_joints(21, c, spacing=20.0, step=5.0)
            if n:
                write_msra_bin(root / f"P{s}" / g / "000000_depth.bin", blob_frame(MSRA_K, j, (240, 320)))
                for k in range(1, n):
                    shutil.copy(root / f"P{s}" / g / "000000_depth.bin", root / f"P{s}" / g / f"{k:06d}_depth.bin")
            flipped = j * [1, -1, -1]  # file convention: y-up, z negative
            (root / f"P{s}" / g / "joint.txt").write_text(f"{n}\n" + "".join(
                " ".join(f"{v:.4f}" for v in flipped.ravel()) + "\n" for _ in range(n)))
            truth[(s, g)] = j
            split = "test" if s == test_subject else "train"
            center_lines[split] += [f"{c[0]} {-c[1]} {c[2]}"] * n  # y-up, z positive
    for split, ls in center_lines.items():
        (root / f"center_{split}_{test_subject}_refined.txt").write_text("\n".join(ls) + "\n")
    return truth


def test_msra_loader(tmp_path, monkeypatch):
    truth = write_msra(tmp_path)
    cfg = make_config(dataset="msra", data_root=str(tmp_path), val_fraction=0.0, augment=False)
    te, tr = build_dataset(cfg, "test", True), build_dataset(cfg, "train", True)
    assert len(te) == 1 and len(tr) == 8 + 176 - 3  # known faulty frames P2/TIP 172-174 excluded
    assert not any(p.parent.name == "TIP" and int(p.name[:6]) in (172, 173, 174) for p in tr.table.paths)
    assert_on_blobs(te[0], truth[(0, "1")])
    assert np.allclose(te[0]["cube"].numpy(), 200.0)
    cubes = {p.parts[-3]: float(tr.table.cubes[i, 0]) for i, p in enumerate(tr.table.paths)}
    assert cubes == {"P1": 200, "P2": 200, "P3": 180, "P4": 180, "P5": 180, "P6": 170, "P7": 160, "P8": 150}
    i8 = next(i for i, p in enumerate(tr.table.paths) if p.parts[-3] == "P8")
    assert_on_blobs(tr[i8], truth[(8, "1")])
    monkeypatch.setattr("datasets.msra.read_joint_file", lambda *a: (_ for _ in ()).throw(AssertionError("labels read")))
    assert set(build_dataset(cfg, "train", False)[0]) == ITEM_KEYS
    with pytest.raises(DatasetError, match="P9|center_test_3_refined"):
        build_dataset(make_config(dataset="msra", data_root=str(tmp_path), msra_test_subject=3), "test", False)


def test_mirror_moves_centres_and_labels_with_the_frames_for_every_dataset(tmp_path):
    """mirror=true on an NYU-format set: crops, centres and labels stay consistent (x -> -x)."""
    import dataclasses

    from config import make_config
    from datasets import build_dataset
    from datasets.nyu import write_nyu_split
    rng = np.random.default_rng(0)
    frames = np.full((2, 480, 640), 2001.0)
    joints = np.zeros((2, 36, 3))
    centers = np.zeros((2, 3))
    for i, (r, c) in enumerate([(200, 250), (260, 380)]):
        frames[i, r - 30:r + 30, c - 30:c + 30] = 700.0
        uvd = np.stack([c + rng.uniform(-20, 20, 36), r + rng.uniform(-20, 20, 36), np.full(36, 705.0)], 1)
        joints[i] = np.stack([(uvd[:, 0] - 320) * 705 / 588.03, (uvd[:, 1] - 240) * 705 / 587.07, uvd[:, 2]], 1)
        centers[i] = joints[i].mean(0)
    write_nyu_split(tmp_path, "test", frames, joints, centers)
    plain = build_dataset(make_config(["dataset=nyu", f"data_root={tmp_path}"]), "test", labels=True)
    mirrored = build_dataset(make_config(["dataset=nyu", f"data_root={tmp_path}", "mirror=true"]), "test", labels=True)
    for i in range(2):
        a, b = plain[i], mirrored[i]
        np.testing.assert_allclose(b["center"][0].numpy(), -a["center"][0].numpy(), atol=1e-4)
        # the mirrored crop is the left-right flip of the plain one, labels flip with it
        np.testing.assert_allclose(b["depth"][0].numpy(), a["depth"][0].numpy()[:, ::-1], atol=1e-5)
        uvd_a, uvd_b = a["joints_uvd"].numpy(), b["joints_uvd"].numpy()
        np.testing.assert_allclose(uvd_b[:, 0], -uvd_a[:, 0], atol=1e-4)
        np.testing.assert_allclose(uvd_b[:, 1:], uvd_a[:, 1:], atol=1e-4)
