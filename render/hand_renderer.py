"""Hand parameters -> normalized depth crop and joints (spec sections 4, 8.2-6/7, 5.5).

The hand is rendered directly into the S x S crop with the crop intrinsics K_crop = A @ K (never a
full frame).  Joints are projected analytically (camera.xyz_to_uvd_norm), never read from the image.
Every conversion goes through `render.camera`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from render import camera
from render.rasterizer import rasterize_depth


@dataclass
class HandRender:
    """One rendering of a batch of hands.

    depth: (B, 1, S, S) normalized depth crop (camera.normalize_depth), background +1.
    verts_xyz: (B, V, 3) normalized xyz (nu) of the 779 capped-mesh vertices.
    joints_xyz: (B, 21, 3) normalized xyz (nu), network joint order.
    joints_uvd: (B, 21, 3) normalized uvd of the crop (analytic projection).
    mask: (B, 1, S, S) bool, pixels covered by the mesh (and inside the frame when a frame mask
        was given); a covered pixel beyond Cz + bz/2 is still background (+1) in `depth`.
    """
    depth: Tensor
    verts_xyz: Tensor
    joints_xyz: Tensor
    joints_uvd: Tensor
    mask: Tensor | None = None


class HandRenderer:
    """Renders hand-model meshes into normalized crops (plain helper, not an nn.Module).

    hand_model: models.mano.HandModel (its `faces` buffer and `network_space`); the renderer
    follows the model's device and dtype.  size: crop side S.  backend: rasterizer backend.
    """

    def __init__(self, hand_model, size: int = camera.CROP_SIZE, backend: str = "auto"):
        self.hand_model = hand_model
        self.size = int(size)
        self.backend = backend

    @property
    def faces(self) -> Tensor:
        return self.hand_model.faces

    def to(self, *args, **kwargs) -> "HandRenderer":
        """Moves the hand model (shared, in place) and returns self."""
        self.hand_model.to(*args, **kwargs)
        return self

    def _depth_mm(self, verts_mm: Tensor, K_crop: Tensor, frame_mask: Tensor | None):
        S = self.size
        depth, face = rasterize_depth(verts_mm, self.faces.to(verts_mm.device), K_crop, S, S,
                                      backend=self.backend)
        mask = face >= 0
        if frame_mask is not None:
            mask = mask & frame_mask.to(mask.device)
            depth = depth * mask.to(depth.dtype)
        return depth[:, None], mask[:, None]

    def render_mesh_mm(self, verts_mm: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                       frame_mask: Tensor | None = None) -> Tensor:
        """Mesh in camera mm (B, V, 3) -> normalized depth crop (B, 1, S, S), background +1.

        center, cube (B, 3) mm; K_crop (B, 3, 3) crop intrinsics; frame_mask (B, S, S) bool
        (camera.crop_frame_mask) blanks crop pixels outside the sensor frame.
        """
        depth, _ = self._depth_mm(verts_mm, K_crop, frame_mask)
        return camera.normalize_depth(depth, center[:, 2], cube[:, 2])

    def render_params(self, params: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                      frame_mask: Tensor | None = None) -> HandRender:
        """Network-space parameters (B, 62) (nu) -> HandRender.

        The hand model's network_space output is normalized xyz w.r.t. (center, cube); it is
        converted to camera mm with camera.norm_to_xyz and rendered with K_crop (B, 3, 3).
        """
        verts_n, joints_n = self.hand_model.network_space(params)
        verts_mm = camera.norm_to_xyz(verts_n, center, cube)
        joints_mm = camera.norm_to_xyz(joints_n, center, cube)
        depth, mask = self._depth_mm(verts_mm, K_crop, frame_mask)
        depth = camera.normalize_depth(depth, center[:, 2], cube[:, 2])
        joints_uvd = camera.xyz_to_uvd_norm(joints_mm, center, cube, K_crop, self.size)
        return HandRender(depth=depth, verts_xyz=verts_n, joints_xyz=joints_n, joints_uvd=joints_uvd,
                          mask=mask)
