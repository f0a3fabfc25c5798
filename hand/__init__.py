"""The hand itself, below `models/` and `datasets/`: skeleton tables (`hand.skeleton`), rotation
helpers (`hand.rotations`) and the 62-value parameter layout (`hand.params`).

Imports numpy and torch only; every other package may import it, it imports none of them.
"""
