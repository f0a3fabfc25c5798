"""Inference on single frames: a trained network + its hand model, from a checkpoint.

`Predictor.from_checkpoint(cfg)` rebuilds the network with the architecture settings stored in the
checkpoint (`stages.checkpoints.ARCHITECTURE_KEYS`: the NetConfig and hand-model keys), so
`phase=export` needs only `load_model=`.  `predict_frame` crops a full depth frame around a centre
exactly as the datasets do (render/camera.py) and returns the last stage's joints in camera mm.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from config import Config, config_fields, make_config
from datasets.joints import JOINT_SETS
from datasets.localize import HandTracker, LocalizerSettings
from datasets.nyu import nyu14_from_network
from hand.params import NUM_PARAMS
from models.dual_branch import DualBranchNet, NetConfig, decode_joints
from models.mano import build_hand_model
from models.palm_landmarks import build_palm_landmarks
from render import camera
from render.hand_renderer import HandRenderer
from stages.checkpoints import architecture_config, check_hand_model, load_checkpoint
from stages.engine import select_device
from stages.metrics import joint_set_name

def dataset_joints(net21: np.ndarray, dataset: str, palm_map: np.ndarray | None) -> np.ndarray:
    """(N, 21, 3) network joints -> (N, Jd, 3) in the dataset's joint order (NYU PALM_2/PALM_3 through
    the label-free palm map of models.palm_landmarks)."""
    js = JOINT_SETS[joint_set_name(dataset)]
    if js.name == "nyu":
        return nyu14_from_network(net21, palm_map)
    return net21[:, list(js.to_network)]


class Predictor:
    """A trained DualBranchNet in eval mode with its hand model, on one device.

    The three-line API (no Config needed; localization included)::

        predictor = Predictor.load("checkpoints/nyu_finetune/best.pt")
        result = predictor(depth_mm, K)          # (H, W) depth in mm (0 = missing), (3, 3) intrinsics
        result["joints21_mm"], result["joints_mm"], result["params"], result["verts_mm"], result["center_mm"]
    """

    def __init__(self, cfg: Config, net: torch.nn.Module, hand_model: torch.nn.Module, device: torch.device):
        self.cfg, self.net, self.hand_model, self.device = cfg, net.eval(), hand_model, device
        self._palm_map = None

    @staticmethod
    def load(path: str | Path, device: str = "auto", **settings) -> "Predictor":
        """A checkpoint's network with the settings it was trained with (cube, localization, branch, ...);
        `settings` override them, e.g. cube_mm=[200, 200, 200], export_branch='mpe'."""
        saved = load_checkpoint(Path(path)).get("config", {})
        keep = {k: v for k, v in saved.items()
                if k in config_fields() and k not in ("phase", "resume", "overwrite", "config")}
        cfg = make_config([], **{**keep, **settings, "phase": "export", "load_model": str(path), "device": device})
        return Predictor.from_checkpoint(cfg)

    def __call__(self, depth_mm: np.ndarray, K: np.ndarray, center_mm: np.ndarray | None = None) -> dict:
        """One full depth frame -> the hand in it, camera mm (x right, y down, z forward).

        depth_mm (H, W) mm, 0 = missing; K (3, 3) intrinsics; center_mm (3,): the crop centre, or None to
        find the hand (nearest hand-sized region, mean shift, re-cropped at the predicted joints).
        Returns found (bool), center_mm (3,) of the final crop, located_mm (3,) the localizer's hand
        surface centre, joints21_mm (21, 3) of the network's export_branch,
        joints_mm (Jd, 3) in the checkpoint dataset's joint set, params (62,), verts_mm (V, 3), faces
        (F, 3); NaN arrays (found False) when no hand is found."""
        K = np.asarray(K, np.float64)
        if center_mm is None:
            tracker = HandTracker((K[0, 0], K[1, 1], K[0, 2], K[1, 2]), LocalizerSettings.from_config(self.cfg), False)
            center_mm, located, how, pred = self.locate_and_predict(depth_mm, tracker, K, with_mesh=True)
        else:
            located, how, pred = center_mm, "given", self.predict_frame(depth_mm, center_mm, K, with_mesh=True)
        faces = self.hand_model.faces.cpu().numpy()
        if pred is None:
            nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
            return {"found": False, "center_mm": nan(3), "located_mm": nan(3), "joints21_mm": nan(21, 3), "joints_mm": None,
                    "params": nan(NUM_PARAMS), "verts_mm": None, "faces": faces, "localization": how}
        if self._palm_map is None and self.cfg.preset().joint_set == "nyu":
            self._palm_map = build_palm_landmarks(self.hand_model).palm_map
        joints = dataset_joints(pred["xyz"][None], self.cfg.dataset, self._palm_map)[0]
        return {"found": True, "center_mm": np.asarray(center_mm, np.float64), "located_mm": np.asarray(located),
                "joints21_mm": pred["xyz"],
                "joints_mm": joints, "params": pred["params"], "verts_mm": pred["verts"], "faces": faces,
                "localization": how}

    def locate_and_predict(self, depth: np.ndarray, tracker, K: np.ndarray, with_mesh: bool):
        """Crop centre, localizer's surface centre, how it was found, prediction of one (mirrored) frame.

        A detected centre is a surface centre: the frame is predicted once there, re-cropped at the
        predicted joint mean and predicted again.  The tracker is seeded with the final joint mean.
        """
        center, how = tracker.locate(depth)
        if center is None:
            tracker.update(None)
            return None, None, how, None
        located = tracker.surface
        pred = self.predict_frame(depth, center, K, with_mesh)
        if how == "detected" and np.all(np.isfinite(pred["xyz"])):
            center = pred["xyz"].mean(axis=0)
            pred = self.predict_frame(depth, center, K, with_mesh)
        tracker.update(pred["xyz"].mean(axis=0))
        return center, located, how, pred

    @staticmethod
    def from_checkpoint(cfg: Config) -> "Predictor":
        if not cfg.load_model:
            raise ValueError(f"phase={cfg.phase} needs load_model=<checkpoint .pt>")
        device = select_device(cfg.device)
        ckpt = load_checkpoint(Path(cfg.load_model), map_location="cpu")
        arch_cfg = architecture_config(cfg, ckpt.get("config"))
        hand_model = build_hand_model(arch_cfg).to(device)
        check_hand_model(ckpt, hand_model.identity(), cfg.load_model, cfg.hand_model_check)
        net = DualBranchNet(NetConfig.from_config(arch_cfg), HandRenderer(hand_model, size=camera.CROP_SIZE)).to(device)
        net.load_state_dict(ckpt["model"])
        return Predictor(arch_cfg, net, hand_model, device)

    @torch.no_grad()
    def predict_crops(self, depth_n: torch.Tensor, center: torch.Tensor, cube: torch.Tensor,
                      K_crop: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Normalized crops (B,1,S,S) -> per stage {'pwe': (B,21,3) mm, 'mpe': (B,21,3) mm, 'params': (B,62)}."""
        dev = self.device
        depth_n, center, cube, K_crop = (t.to(dev, torch.float32) for t in (depth_n, center, cube, K_crop))
        out = []
        for stage in self.net(depth_n, center, cube, K_crop):
            uvd = decode_joints(stage.maps, depth_n, self.net.net_cfg)
            pwe = camera.uvd_norm_to_xyz(uvd, center, cube, K_crop, depth_n.shape[-1])
            _, joints_nu = self.hand_model.network_space(stage.params)
            mpe = camera.norm_to_xyz(joints_nu, center, cube)
            out.append({"pwe": pwe, "mpe": mpe, "params": stage.params})
        return out

    def predict_frame(self, depth_mm: np.ndarray, center_mm: np.ndarray, K: np.ndarray,
                      with_mesh: bool = False) -> dict[str, np.ndarray]:
        """Full frame (H,W) mm + centre (3,) mm + intrinsics (3,3) -> last stage's prediction.

        Returns 'xyz' (21,3) camera mm of the `export_branch`, 'params' (62,) network space and, with
        with_mesh, 'verts' (V,3) camera mm of the predicted hand.  The crop is made exactly as the
        datasets make theirs (render.camera), with the cube `cube_mm`.
        """
        cube = torch.tensor([self.cfg.cube_mm], dtype=torch.float64)
        c = torch.from_numpy(np.asarray(center_mm, np.float64))[None]
        Kt = torch.from_numpy(np.asarray(K, np.float64))[None]
        A = camera.crop_transform(c, cube, Kt)
        crop_mm = camera.crop_frame_nearest(depth_mm, A[0].numpy(), camera.CROP_SIZE)
        depth_n = camera.normalize_depth(torch.from_numpy(crop_mm)[None, None].double(), c[:, 2], cube[:, 2])
        last = self.predict_crops(depth_n, c, cube, A @ Kt)[-1]
        out = {"xyz": last[self.cfg.export_branch][0].double().cpu().numpy(),
               "params": last["params"][0].double().cpu().numpy()}
        if with_mesh:
            with torch.no_grad():
                verts_nu, _ = self.hand_model.network_space(last["params"])
            out["verts"] = camera.norm_to_xyz(verts_nu.double().cpu(), c, cube)[0].numpy()
        return out
