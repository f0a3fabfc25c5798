"""ResNet-18 pieces of the dual-branch network (spec 5.2): stem, body, deconvolution decoder, heads.

`net=resnet18` is the paper's network; `net=tiny` is the same code with fewer channels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# stem width, body widths (layer1..4), decoder width
NET_WIDTHS = {
    "resnet18": (64, (64, 128, 256, 512), 256),
    "tiny": (16, (16, 32, 64, 128), 32),
}
BLOCKS_PER_LAYER = (2, 2, 2, 2)
LAYER_STRIDES = (1, 2, 2, 2)
DECONV_LAYERS = 3
HEAD_STD = 1e-3           # 1x1 output heads, transposed convs and linear weights: N(0, 0.001)


def init_weights(module: nn.Module) -> None:
    """Spec 5.2 initialisation; heads are initialised by `Heads` itself."""
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, HEAD_STD)
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, HEAD_STD)


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut (1x1 strided projection + BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Stem(nn.Module):
    """(B, 1, 128, 128) -> (B, C, 64, 64): 5x5 stride-1 conv, BN, ReLU, 3x3/2 max-pool."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class Body(nn.Module):
    """ResNet-18 layers 1-4: (B, c_in, 64, 64) -> (B, widths[-1], 8, 8)."""

    def __init__(self, c_in: int, widths: tuple[int, ...]):
        super().__init__()
        layers, c = [], c_in
        for w, n, s in zip(widths, BLOCKS_PER_LAYER, LAYER_STRIDES):
            blocks = [BasicBlock(c, w, s)] + [BasicBlock(w, w, 1) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            c = w
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Three [4x4 transposed conv stride 2, BN, ReLU]: (B, c_in, 8, 8) -> (B, width, 64, 64)."""

    def __init__(self, c_in: int, width: int):
        super().__init__()
        layers, c = [], c_in
        for _ in range(DECONV_LAYERS):
            layers += [nn.ConvTranspose2d(c, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Heads(nn.Module):
    """PWE: 1x1 convs -> offsets (3J) and heats (J), concatenated (B, 4J, 64, 64).
    MPE: global average pool of the body output + Linear -> (B, num_params)."""

    def __init__(self, dec_width: int, body_width: int, num_joints: int, num_params: int):
        super().__init__()
        self.offset = nn.Conv2d(dec_width, 3 * num_joints, 1)
        self.heat = nn.Conv2d(dec_width, num_joints, 1)
        self.params = nn.Linear(body_width, num_params)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """1x1 heads N(0, 0.001) with zero bias; linear N(0, 0.001) with the framework's default bias."""
        for conv in (self.offset, self.heat):
            nn.init.normal_(conv.weight, 0.0, HEAD_STD)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.params.weight, 0.0, HEAD_STD)   # bias: framework default

    def forward(self, dec: Tensor, body: Tensor) -> tuple[Tensor, Tensor]:
        maps = torch.cat([self.offset(dec), self.heat(dec)], dim=1)
        return maps, self.params(body.mean(dim=(2, 3)))
