"""Dataset joint sets: how each dataset's joints map onto the network's 21, evaluation subsets,
driven by tables (spec 3.4, 11.2).

The network's own joint order and skeleton (parents, bones, fingertip vertices) are hand-model
knowledge: `hand/skeleton.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

from hand.skeleton import NETWORK_JOINT_NAMES, NUM_JOINTS


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

NETWORK21 = JointSet(name="network", names=NETWORK_JOINT_NAMES, to_network=tuple(range(NUM_JOINTS)),
                     standard=tuple(range(NUM_JOINTS)), dsf=tuple(range(NUM_JOINTS)))

JOINT_SETS = {"nyu": NYU14, "icvl": ICVL16, "msra": MSRA21, "network": NETWORK21}

# DHG-14/28 and SHREC'17 skeleton order (22 joints) from the 21 network joints; "palm" is the
# mean of all 21 joints (DSF's definition).
DHG22_FROM_NETWORK = (0, "palm", 13, 14, 15, 20, 1, 2, 3, 16, 4, 5, 6, 17, 10, 11, 12, 19, 7, 8, 9, 18)
