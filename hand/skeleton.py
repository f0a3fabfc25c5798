"""The hand's skeleton: MANO's 16 joints, the network's 21 joints and how they connect (spec 3.4).

Network order (21 joints, both branches): 0 wrist; 1-3 index MCP/PIP/DIP; 4-6 middle; 7-9 pinky;
10-12 ring; 13-15 thumb CMC/MCP/IP; 16-20 tips of index, middle, pinky, ring, thumb
(MANO vertices 333, 444, 672, 555, 744).  Joints 0-15 are MANO's own, in its kinematic tree.
How a dataset's joints map onto these is dataset knowledge (`datasets/joints.py`).
"""
from __future__ import annotations

NUM_JOINTS = 21
NUM_MANO_JOINTS = 16
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
# The distal joint (DIP / thumb IP) each fingertip 16..20 hangs from and moves with.
TIP_PARENTS = (3, 6, 9, 12, 15)
# Parent of each of the 21 network joints.
NETWORK_PARENTS = MANO_PARENTS + TIP_PARENTS
# The three articulated joints of each chain: index, middle, pinky, ring (MCP, PIP, DIP), thumb (CMC, MCP, IP).
CHAINS = ((1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (13, 14, 15))
