"""Convert the official MANO_RIGHT.pkl (chumpy objects, Python-2 pickle) into a plain .npz.

    python tools/convert_mano.py MANO/MANO_RIGHT.pkl [MANO/MANO_RIGHT.npz]

No chumpy needed (models.mano_io reads the pickle with a restricted unpickler).  The .npz holds
the same keys with plain arrays (J_regressor densified); like the .pkl it is covered by the MANO
licence and must not be committed or redistributed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.mano_io import MANOFileError, load_mano_arrays, save_mano_npz  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    src = Path(argv[0])
    dst = Path(argv[1]) if len(argv) == 2 else src.with_suffix(".npz")
    try:
        arrays = load_mano_arrays(src)
    except MANOFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_mano_npz(arrays, dst)
    print(f"wrote {dst} ({len(arrays)} keys: {', '.join(sorted(arrays))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
