"""Joint sets, dataset joint mappings and evaluation subsets, driven by tables (spec 3.4, 11.2).

Network order (21 joints, both branches): 0 wrist; 1-3 index MCP/PIP/DIP; 4-6 middle; 7-9 pinky;
10-12 ring; 13-15 thumb CMC/MCP/IP; 16-20 tips of index, middle, pinky, ring, thumb
(MANO vertices 333, 444, 672, 555, 744).
"""
from __future__ import annotations

from dataclasses import dataclass

NUM_JOINTS = 21
NETWORK_JOINT_NAMES = (
    "wrist", "index_mcp", "index_pip", "index_dip", "middle_mcp", "middle_pip", "middle_dip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "ring_mcp", "ring_pip", "ring_dip",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "index_tip", "middle_tip", "pinky_tip", "ring_tip",
    "thumb_tip",
)
TIP_VERTEX_IDS = (333, 444, 672, 555, 744)
# Parent of each of the 16 MANO skeleton joints (root: -1).
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
# Child of articulated joint k = 1..15 (bone k runs from joint k to BONE_CHILD[k-1]).
BONE_CHILD = (2, 3, 16, 5, 6, 17, 8, 9, 18, 11, 12, 19, 14, 15, 20)
# Parent of each of the 21 network joints (tips hang from the DIP / IP joints).
NETWORK_PARENTS = MANO_PARENTS + (3, 6, 9, 12, 15)


@dataclass(frozen=True)
class JointSet:
    """How a dataset's joints relate to the network's 21 joints.

    to_network[i]: the network joint that predicts dataset joint i (None: no counterpart).
    standard: dataset joint indices scored by the standard protocol.
    dsf: dataset joint indices scored by the DSF code protocol (reported alongside).
    """
    name: str
    names: tuple[str, ...]
    to_network: tuple[int | None, ...]
    standard: tuple[int, ...]
    dsf: tuple[int, ...]

    @property
    def num_joints(self) -> int:
        return len(self.names)


NYU_EVAL_IDS_36 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
NYU14 = JointSet(
    name="nyu",
    names=("pinky_tip", "pinky_mid", "ring_tip", "ring_mid", "middle_tip", "middle_mid",
           "index_tip", "index_mid", "thumb_tip", "thumb_2nd", "thumb_3rd", "palm_1", "palm_2",
           "palm_3"),
    to_network=(18, 8, 19, 11, 17, 5, 16, 2, 20, 15, 14, 0, None, None),
    standard=tuple(range(14)),
    dsf=tuple(range(11)),
)

ICVL16 = JointSet(
    name="icvl",
    names=("palm", "thumb_root", "thumb_mid", "thumb_tip", "index_root", "index_mid", "index_tip",
           "middle_root", "middle_mid", "middle_tip", "ring_root", "ring_mid", "ring_tip",
           "little_root", "little_mid", "little_tip"),
    to_network=(0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9),
    standard=tuple(range(16)),
    dsf=tuple(range(16)),
)
# DSF-protocol per-joint depth bias for ICVL (mm, ICVL order), subtracted from predicted z.
ICVL_DSF_DEPTH_BIAS_MM = (20, 22, 13.5, 7.5, 12.5, 12.5, 3, 12.5, 12.5, 8, 16, 12.5, 3, 13, 7.3, 6)

MSRA21 = JointSet(
    name="msra",
    names=("wrist", "index_mcp", "index_pip", "index_dip", "index_tip", "middle_mcp", "middle_pip",
           "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip", "ring_tip", "little_mcp",
           "little_pip", "little_dip", "little_tip", "thumb_mcp", "thumb_pip", "thumb_dip",
           "thumb_tip"),
    to_network=(0, 1, 2, 3, 16, 4, 5, 6, 17, 10, 11, 12, 19, 7, 8, 9, 18, 13, 14, 15, 20),
    standard=tuple(range(21)),
    dsf=tuple(range(1, 20)),
)

NETWORK21 = JointSet(name="network", names=NETWORK_JOINT_NAMES, to_network=tuple(range(21)),
                     standard=tuple(range(21)), dsf=tuple(range(21)))

JOINT_SETS = {"nyu": NYU14, "icvl": ICVL16, "msra": MSRA21, "network": NETWORK21}

# DHG-14/28 and SHREC'17 skeleton order (22 joints) from the 21 network joints; "palm" is the
# mean of all 21 joints (DSF's definition).
DHG22_FROM_NETWORK = (0, "palm", 13, 14, 15, 20, 1, 2, 3, 16, 4, 5, 6, 17, 10, 11, 12, 19, 7, 8, 9, 18)
