"""MANO layer (spec 3): 62 parameters -> wrist-capped mesh (779 verts, 1554 faces) + 21 joints.

Built on ``smplx.lbs.lbs`` (shape blend, rest joints, pose correctives from (R - I), kinematic
chain, linear blend skinning); around it: the PCA articulation over the full 45 x 45 basis plus the
mean pose, a zero-safe axis-angle map, the 21 joints regressed from the POSED vertices plus 5 tip
vertices, the wrist cap and the mm / network-space mappings of spec 3.2.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from smplx.lbs import lbs
from torch import Tensor, nn

from config import Config
from hand.params import NETWORK_UNIT_MM, NUM_MANO_PARAMS, NUM_PARAMS, POSE, ROTATION, SCALE, SHAPE, TRANSLATION
from hand.rotations import axis_angle_to_matrix
from hand.skeleton import MANO_PARENTS, TIP_VERTEX_IDS
from models.mano_io import load_mano_arrays, validate_mano_arrays
from models.standin_hand import make_standin_arrays

log = logging.getLogger(__name__)

MANO_WRIST_LOOP = (121, 214, 215, 279, 239, 234, 92, 38, 122, 118, 117, 119, 120, 108, 79, 78)
PART_WEIGHT_THRESHOLD = 0.1
MANO_URL = "https://mano.is.tue.mpg.de"
REPO_ROOT = Path(__file__).resolve().parents[1]
HAND_MODEL_KEYS = ("mano_path", "hand_model")   # the settings build_hand_model reads


def _boundary_loop(faces: np.ndarray) -> list[int]:
    """The single boundary loop of a triangle mesh, in the direction its faces traverse it."""
    count: dict = {}
    for tri in faces:
        for i in range(3):
            a, b = int(tri[i]), int(tri[(i + 1) % 3])
            count[(a, b)] = count.get((a, b), 0) + 1
    nxt = {a: b for (a, b) in count if (b, a) not in count}
    if not nxt:
        raise ValueError("hand mesh has no boundary edges; expected one open loop at the wrist")
    start = min(nxt)
    loop = [start]
    while nxt[loop[-1]] != start:
        loop.append(nxt[loop[-1]])
        if len(loop) > len(nxt):
            raise ValueError("hand mesh boundary is not a single loop")
    if len(loop) != len(nxt):
        raise ValueError(f"hand mesh has {len(nxt)} boundary edges but a loop of {len(loop)}; "
                         "expected exactly one boundary loop at the wrist")
    return loop


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if scipy.sparse.issparse(x) else x, dtype=np.float64)


def _f32(x) -> Tensor:
    return torch.as_tensor(_dense(x), dtype=torch.float32)


class HandModel(nn.Module):
    """MANO (or the stand-in) as a batched, differentiable torch module.

    Attributes: ``faces`` (1554, 3) long buffer (wrist-capped), ``part_faces`` list of 15 long
    tensors (faces with a vertex whose skinning weight for joint k = 1..15 exceeds 0.1),
    ``regressor_support`` list of 16 long tensors (vertices with non-zero regressor weight),
    ``is_standin`` (the generated stand-in hand, not MANO), ``arrays`` (the source dict, e.g. for
    the pose sampler).  All tensors are buffers and move with ``.to()``; the layer computes in
    the buffers' dtype (float32 by default).
    """

    def __init__(self, arrays: dict):
        super().__init__()
        validate_mano_arrays(arrays, "hand model arrays")
        self.arrays = arrays
        self.is_standin = "standin_version" in arrays
        parents = np.asarray(arrays["kintree_table"])[0].astype(np.int64)
        parents[0] = -1
        if tuple(parents.tolist()) != MANO_PARENTS:
            raise ValueError(f"kintree_table parents {parents.tolist()} differ from MANO's {list(MANO_PARENTS)}")
        faces = np.asarray(arrays["f"], dtype=np.int64)
        loop = _boundary_loop(faces)
        if not self.is_standin:
            k = loop.index(MANO_WRIST_LOOP[0]) if MANO_WRIST_LOOP[0] in loop else 0
            rolled = loop[k:] + loop[:k]
            if rolled != list(MANO_WRIST_LOOP) and rolled[:1] + rolled[1:][::-1] != list(MANO_WRIST_LOOP):
                raise ValueError(f"MANO wrist loop {loop} differs from the spec's {list(MANO_WRIST_LOOP)}")
        n_verts = len(arrays["v_template"])
        cap = n_verts
        # Each loop edge (a -> b) is traversed a -> b by its face; the cap traverses b -> a.
        cap_faces = [(loop[(i + 1) % len(loop)], loop[i], cap) for i in range(len(loop))]
        faces_all = np.concatenate([faces, np.array(cap_faces, dtype=np.int64)])
        weights = _dense(arrays["weights"])
        reg = _dense(arrays["J_regressor"])

        self.register_buffer("v_template", _f32(arrays["v_template"]))
        self.register_buffer("shapedirs", _f32(arrays["shapedirs"]))
        posedirs = _dense(arrays["posedirs"])
        self.register_buffer("posedirs", _f32(posedirs.reshape(-1, posedirs.shape[-1]).T))
        self.register_buffer("J_regressor", _f32(reg))
        self.register_buffer("lbs_weights", _f32(weights))
        self.register_buffer("hands_components", _f32(arrays["hands_components"]))
        self.register_buffer("hands_mean", _f32(np.asarray(arrays["hands_mean"]).reshape(-1)))
        self.register_buffer("parents", torch.as_tensor(parents))
        self.register_buffer("tip_ids", torch.tensor(TIP_VERTEX_IDS, dtype=torch.long))
        self.register_buffer("wrist_loop", torch.tensor(loop, dtype=torch.long))
        self.register_buffer("faces", torch.as_tensor(faces_all))
        for k in range(1, 16):
            verts_k = np.zeros(n_verts + 1, dtype=bool)
            verts_k[:n_verts] = weights[:, k] > PART_WEIGHT_THRESHOLD
            self.register_buffer(f"_part_faces_{k}", torch.as_tensor(np.nonzero(verts_k[faces_all].any(1))[0]))
        for j in range(16):
            self.register_buffer(f"_support_{j}", torch.as_tensor(np.nonzero(reg[j])[0]))

    @property
    def part_faces(self) -> list[Tensor]:
        return [getattr(self, f"_part_faces_{k}") for k in range(1, 16)]

    @property
    def regressor_support(self) -> list[Tensor]:
        return [getattr(self, f"_support_{j}") for j in range(16)]

    @property
    def name(self) -> str:
        return "stand-in hand" if self.is_standin else "MANO"

    def identity(self) -> dict[str, str]:
        """{'kind': 'standin' | 'mano', 'fingerprint': 16 hex digits of the SHA-256 of every model
        array}: what a checkpoint records so that it is never used with another hand model."""
        digest = hashlib.sha256()
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "hands_components",
                     "hands_mean", "parents", "faces"):
            digest.update(getattr(self, name).detach().cpu().contiguous().numpy().tobytes())
        return {"kind": "standin" if self.is_standin else "mano", "fingerprint": digest.hexdigest()[:16]}

    def articulation(self, theta: Tensor) -> Tensor:
        """PCA coefficients (B, 45) -> joint axis-angles (B, 15, 3) = θ·components + mean."""
        return (theta @ self.hands_components + self.hands_mean).reshape(-1, 15, 3)

    def mano_mm(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """params (B, 62) or (B, 58): ω, θ, β[, s, t] -> verts (B, 779, 3), joints (B, 21, 3) in mm.

        Unscaled, untranslated MANO in its own frame (s and t are ignored here).
        """
        if params.dim() != 2 or params.shape[1] not in (NUM_MANO_PARAMS, NUM_PARAMS):
            raise ValueError(f"hand parameters must be (B, {NUM_PARAMS}) or (B, {NUM_MANO_PARAMS}), "
                             f"got {tuple(params.shape)}")
        params = params.to(self.v_template.dtype)
        omega, theta, beta = params[:, ROTATION], params[:, POSE], params[:, SHAPE]
        with torch.autocast(device_type=params.device.type, enabled=False):  # MANO stays float32
            rotvec = torch.cat([omega[:, None], self.articulation(theta)], dim=1)   # (B, 16, 3)
            rot = axis_angle_to_matrix(rotvec)
            verts, _ = lbs(beta, rot, self.v_template, self.shapedirs, self.posedirs,
                           self.J_regressor, self.parents, self.lbs_weights, pose2rot=False)
            regressed = torch.einsum("jv,bvc->bjc", self.J_regressor, verts)
        joints = torch.cat([regressed, verts[:, self.tip_ids]], dim=1)
        cap = verts[:, self.wrist_loop].mean(dim=1, keepdim=True)
        return torch.cat([verts, cap], dim=1) * 1000.0, joints * 1000.0

    def source_space(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """params (B, 62) -> (verts, joints) = s · MANO_mm + t, in mm."""
        verts, joints = self.mano_mm(params)
        s, t = params[:, SCALE, None, None].to(verts.dtype), params[:, None, TRANSLATION].to(verts.dtype)
        return s * verts + t, s * joints + t

    def network_space(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """params (B, 62) nu -> (verts, joints) = s · MANO_mm / 125 + t, normalized xyz (nu)."""
        verts, joints = self.mano_mm(params)
        s = params[:, SCALE, None, None].to(verts.dtype) / NETWORK_UNIT_MM
        t = params[:, None, TRANSLATION].to(verts.dtype)
        return s * verts + t, s * joints + t


def _resolve(path: str) -> Path | None:
    """The model file at `path` (or its .npz sibling), relative to the CWD or the repository."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [p, REPO_ROOT / p]
    for c in candidates:
        for q in (c, c.with_suffix(".npz")):
            if q.is_file():
                return q
    return None


def resolved_hand_model(cfg: Config) -> str:
    """cfg.hand_model with 'auto' replaced by what build_hand_model will load: 'mano' or 'standin'."""
    if cfg.hand_model != "auto":
        return cfg.hand_model
    return "mano" if _resolve(cfg.mano_path) is not None else "standin"


def build_hand_model(cfg: Config) -> HandModel:
    """The hand layer of a run: MANO from cfg.mano_path, else the generated stand-in hand."""
    choice = cfg.hand_model
    found = _resolve(cfg.mano_path) if choice in ("auto", "mano") else None
    if found is not None:
        log.info("hand model: MANO from %s", found)
        return HandModel(load_mano_arrays(found))
    if choice == "mano":
        raise FileNotFoundError(
            f"hand_model=mano but no model file at mano_path={cfg.mano_path!r}: download MANO_RIGHT.pkl "
            f"(free registration at {MANO_URL}) and put it at MANO/MANO_RIGHT.pkl (see MANO/README.md)")
    if choice == "auto":
        warnings.warn(f"{cfg.mano_path} not found: using the generated stand-in hand (not MANO). "
                      f"For real results put MANO_RIGHT.pkl ({MANO_URL}) at MANO/MANO_RIGHT.pkl.",
                      stacklevel=2)
    log.info("hand model: generated stand-in hand")
    return HandModel(make_standin_arrays())


@functools.lru_cache(maxsize=1)
def _standin_arrays() -> dict:
    return make_standin_arrays()


def hand_arrays(cfg: Config, hand_model) -> dict:
    """The MANO-layout arrays behind `hand_model` (for the pose sampler): its own `.arrays` when it
    keeps them, else the stand-in or the model file of cfg.mano_path, as `build_hand_model` would."""
    arrays = getattr(hand_model, "arrays", None)
    if arrays is not None:
        return arrays
    if getattr(hand_model, "is_standin", True):
        return _standin_arrays()
    return load_mano_arrays(_resolve(cfg.mano_path))
