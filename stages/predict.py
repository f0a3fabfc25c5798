"""Inference on single frames: a trained network + its hand model, from a checkpoint.

`Predictor.from_checkpoint(cfg)` rebuilds the network with the architecture settings stored in the
checkpoint (net, stage_num, map and hand-model settings), so `phase=export` needs only
`load_model=`.  `predict_frame` crops a full depth frame around a centre exactly as the datasets do
(render/camera.py) and returns the last stage's joints in camera mm.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from config import Config
from models.densemap import decode
from render import camera

# Settings that define the trained network; they come from the checkpoint, not the command line.
ARCHITECTURE_KEYS = ("net", "stage_num", "map_size", "kernel_radius_nu", "softmax_temperature",
                     "fg_threshold_nu", "mano_path", "hand_model")


def network_config(cfg: Config, checkpoint_config: dict | None) -> Config:
    """cfg with the architecture keys of the checkpoint's config."""
    if not checkpoint_config:
        return cfg
    return dataclasses.replace(cfg, **{k: checkpoint_config[k] for k in ARCHITECTURE_KEYS if k in checkpoint_config})


class Predictor:
    """A trained DualBranchNet in eval mode with its hand model, on one device."""

    def __init__(self, cfg: Config, net: torch.nn.Module, hand_model: torch.nn.Module, device: torch.device):
        self.cfg, self.net, self.hand_model, self.device = cfg, net.eval(), hand_model, device

    @staticmethod
    def from_checkpoint(cfg: Config) -> "Predictor":
        from models.dual_branch import DualBranchNet
        from models.mano import build_hand_model
        from render.hand_renderer import HandRenderer
        from stages.checkpoints import check_hand_model, load_checkpoint
        from stages.engine import select_device

        if not cfg.load_model:
            raise ValueError(f"phase={cfg.phase} needs load_model=<checkpoint .pt>")
        device = select_device(cfg.device)
        ckpt = load_checkpoint(Path(cfg.load_model), map_location="cpu")
        net_cfg = network_config(cfg, ckpt.get("config"))
        hand_model = build_hand_model(net_cfg).to(device)
        check_hand_model(ckpt, hand_model.identity(), cfg.load_model, cfg.hand_model_check)
        net = DualBranchNet(net_cfg, HandRenderer(hand_model, size=camera.CROP_SIZE)).to(device)
        net.load_state_dict(ckpt["model"])
        return Predictor(net_cfg, net, hand_model, device)

    @torch.no_grad()
    def predict_crops(self, depth_n: torch.Tensor, center: torch.Tensor, cube: torch.Tensor,
                      K_crop: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Normalized crops (B,1,S,S) -> per stage {'pwe': (B,21,3) mm, 'mpe': (B,21,3) mm, 'params': (B,62)}."""
        dev = self.device
        depth_n, center, cube, K_crop = (t.to(dev, torch.float32) for t in (depth_n, center, cube, K_crop))
        out = []
        for stage in self.net(depth_n, center, cube, K_crop):
            uvd = decode(stage.maps, depth_n, self.cfg.kernel_radius_nu, self.cfg.softmax_temperature,
                         self.cfg.fg_threshold_nu)
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
