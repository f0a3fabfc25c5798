"""The dual-branch network (spec 5): PWE dense maps + MPE MANO parameters, optional refinement stage.

    net_cfg = NetConfig.from_config(cfg)          # the architecture keys, all the network sees
    net = DualBranchNet(net_cfg, renderer)        # renderer: render.hand_renderer.HandRenderer (stage_num=2)
    outs = net(depth, center, cube, K_crop)       # list of StageOutput, one per stage
    joints_uvd = decode_joints(outs[-1].maps, depth, net_cfg)

The renderer is held as a plain attribute (not a sub-module): its buffers stay out of the network's
state_dict and DDP; put it on the network's device yourself.  Rendering and the rendered-pose encoding
run in float32 with autocast disabled (R2).  Nothing is detached inside forward.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from config import Config
from hand.params import NUM_PARAMS
from hand.skeleton import NUM_JOINTS
from models import densemap
from models.backbone import NET_WIDTHS, Body, Decoder, Heads, Stem, init_weights

MAP_CHANNELS = 4 * NUM_JOINTS


@dataclass(frozen=True)
class NetConfig:
    """The settings that define a dual-branch network and its map codec (the architecture keys).

    net: backbone ('resnet18' | 'tiny'); stage_num: 1 or 2; map_size: side F of the dense maps;
    kernel_radius_nu: kernel radius kappa (nu); softmax_temperature: heat-map softmax temperature
    when decoding; fg_threshold_nu: normalized depth below which a reference-crop pixel is hand.
    """
    net: str
    stage_num: int
    map_size: int
    kernel_radius_nu: float
    softmax_temperature: float
    fg_threshold_nu: float

    @classmethod
    def from_config(cls, cfg: Config) -> "NetConfig":
        """The architecture keys of a run's Config."""
        return cls(**{k: getattr(cfg, k) for k in NET_KEYS})


NET_KEYS = tuple(f.name for f in dataclasses.fields(NetConfig))


@dataclass
class StageOutput:
    """maps (B, 84, F, F); params (B, 62) network space (nu); render: the HandRender of these params
    made as the next stage's input (stage 1 of a 2-stage net), else None."""
    maps: Tensor
    params: Tensor
    render: object | None = None


def decode_joints(maps: Tensor, ref_depth: Tensor, net_cfg: NetConfig) -> Tensor:
    """PWE joints (B, J, 3) normalized uvd from maps (B, 4J, F, F) and the reference crop (B, 1, S, S)."""
    return densemap.decode(maps.float(), ref_depth.float(), net_cfg.kernel_radius_nu, net_cfg.softmax_temperature,
                           net_cfg.fg_threshold_nu)


def encode_joints(joints_uvd: Tensor, ref_depth: Tensor, net_cfg: NetConfig) -> Tensor:
    """Dense-map targets (B, 4J, F, F) of joints (B, J, 3) uvd with reference crop (B, 1, S, S)."""
    return densemap.encode(joints_uvd.float(), ref_depth.float(), net_cfg.map_size, net_cfg.kernel_radius_nu,
                           net_cfg.fg_threshold_nu)


class Stage(nn.Module):
    """Body (B, c_in, 64, 64) -> decoder features (B, D, 64, 64), maps, params."""

    def __init__(self, c_in: int, widths: tuple[int, ...], dec_width: int):
        super().__init__()
        self.body = Body(c_in, widths)
        self.decoder = Decoder(widths[-1], dec_width)
        self.heads = Heads(dec_width, widths[-1], NUM_JOINTS, NUM_PARAMS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        body = self.body(x)
        dec = self.decoder(body)
        maps, params = self.heads(dec, body)
        return dec, maps, params


class DualBranchNet(nn.Module):
    """Stage 1 (stem + ResNet-18 body + decoder + heads) and, with stage_num = 2, the refinement stage
    fed by stem features, stage-1 decoder features, maps1 and the encoding of the rendered stage-1 hand.
    `net_cfg` (a NetConfig, kept as `.net_cfg`) is everything it reads."""

    def __init__(self, net_cfg: NetConfig, renderer=None):
        super().__init__()
        if not isinstance(net_cfg, NetConfig):
            raise TypeError(f"DualBranchNet takes a NetConfig (NetConfig.from_config(cfg)), "
                            f"got {type(net_cfg).__name__}")
        if net_cfg.stage_num == 2 and renderer is None:
            raise ValueError("stage_num=2 needs a renderer (render.hand_renderer.HandRenderer)")
        stem_w, widths, dec_w = NET_WIDTHS[net_cfg.net]
        self.net_cfg = net_cfg
        self.__dict__["renderer"] = renderer               # not a sub-module (see module docstring)
        self.stem = Stem(stem_w)
        self.stage1 = Stage(stem_w, widths, dec_w)
        if net_cfg.stage_num == 2:
            fused = stem_w + dec_w + 2 * MAP_CHANNELS       # 64 + 256 + 84 + 84 = 488 for resnet18
            self.fuse = nn.Sequential(nn.Conv2d(fused, dec_w, 3, 1, 1, bias=True), nn.BatchNorm2d(dec_w),
                                      nn.ReLU(inplace=True))
            self.stage2 = Stage(dec_w, widths, dec_w)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, Heads):
                m.reset_parameters()

    def render_input(self, params: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor):
        """Render params (B, 62) in float32 without autocast -> HandRender."""
        with torch.autocast(params.device.type, enabled=False):
            return self.renderer.render_params(params.float(), center.float(), cube.float(), K_crop.float())

    def forward(self, depth: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor) -> list[StageOutput]:
        """depth (B, 1, 128, 128) normalized; center, cube (B, 3) mm; K_crop (B, 3, 3) -> [StageOutput]."""
        stem = self.stem(depth)
        dec1, maps1, params1 = self.stage1(stem)
        if self.net_cfg.stage_num == 1:
            return [StageOutput(maps1, params1)]
        render = self.render_input(params1, center, cube, K_crop)
        with torch.autocast(depth.device.type, enabled=False):
            pose_maps = encode_joints(render.joints_uvd, render.depth, self.net_cfg)
        fused = self.fuse(torch.cat([stem, dec1, maps1, pose_maps.to(maps1.dtype)], dim=1))
        _, maps2, params2 = self.stage2(fused)
        return [StageOutput(maps1, params1, render), StageOutput(maps2, params2)]
