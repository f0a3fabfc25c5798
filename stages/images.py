"""TensorBoard image logs of the training stages.

`image_grid` draws rows of [input crop with joints | rendered hand]; `ImageLog` is the one place a
stage's step stores what its image shows (`keep`) and the engine's `image_fn` (`__call__`), so every
stage logs the same picture from the same state.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from config import Config
from models.dual_branch import NetConfig, decode_joints
from render.camera import norm_to_crop_px

IMAGE_ROWS = 8          # samples shown per image


def _gray_tile(img: Tensor | None, b: int, S: int) -> np.ndarray:
    if img is None:
        return np.zeros((S, S, 3), np.float32)
    g = ((1.0 - img[b, 0].detach().float().clamp(-1, 1).cpu().numpy()) / 2.0).astype(np.float32)
    return np.repeat(g[..., None], 3, axis=-1).copy()


def image_grid(depth: Tensor, rendered: Tensor | None = None, joints_uvd: Tensor | None = None,
               n: int = IMAGE_ROWS) -> Tensor:
    """Rows of [input depth with joints drawn | rendered hand] for the first n samples.

    depth, rendered (B, 1, S, S) normalized (background +1, drawn black; near = bright);
    joints_uvd (B, J, 3) nu.  Returns an RGB image (3, n*S, 2*S) float in [0, 1] for
    SummaryWriter.add_image.
    """
    import cv2

    n = min(n, depth.shape[0])
    S = depth.shape[-1]
    rows = []
    for b in range(n):
        tiles = [_gray_tile(depth, b, S), _gray_tile(rendered, b, S)]
        if joints_uvd is not None:
            uv = norm_to_crop_px(joints_uvd[b, :, :2].detach().float().cpu(), S).numpy()
            for k, (u, v) in enumerate(uv):
                if np.isfinite(u) and np.isfinite(v):
                    color = (1.0, 0.2 + 0.6 * (k % 3) / 2, 0.1) if k else (0.1, 0.9, 0.1)
                    cv2.circle(tiles[0], (int(round(u)), int(round(v))), 2, color, -1)
        rows.append(np.concatenate(tiles, axis=1))
    return torch.from_numpy(np.concatenate(rows, axis=0)).permute(2, 0, 1)


class ImageLog:
    """What the image log of the latest step shows: the network input with the last stage's decoded
    pixel-branch joints | the stage-1 hand rendered into the crop (the stage-2 input, or rendered here
    for one-stage networks).  Only the first IMAGE_ROWS samples are kept, detached."""

    def __init__(self, tag: str, cfg: Config, renderer):
        self.tag, self.net_cfg, self.renderer, self.last = tag, NetConfig.from_config(cfg), renderer, None

    def keep(self, outs: list, net_in: Tensor, ref: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor) -> None:
        n = IMAGE_ROWS
        render = outs[0].render
        self.last = {"net_in": net_in[:n].detach(), "ref": ref[:n].detach(), "maps": outs[-1].maps[:n].detach(),
                     "params": outs[0].params[:n].detach(), "center": center[:n], "cube": cube[:n],
                     "K_crop": K_crop[:n], "rendered": None if render is None else render.depth[:n].detach()}

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, Tensor]:
        if self.last is None:
            return {}
        x = self.last
        rendered = x["rendered"]
        if rendered is None:
            rendered = self.renderer.render_params(x["params"].float(), x["center"], x["cube"], x["K_crop"]).depth
        joints = decode_joints(x["maps"].float(), x["ref"], self.net_cfg)
        return {f"{self.tag}/input_joints_render": image_grid(x["net_in"], rendered, joints)}
