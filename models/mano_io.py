"""Read MANO_RIGHT.pkl without chumpy (or a converted .npz) into plain numpy / scipy arrays.

The official file is a Python-2 pickle (read with encoding latin-1) in which several arrays are
objects of the old ``chumpy`` library, which does not import on NumPy >= 1.24.  A restricted
unpickler substitutes every ``chumpy.*`` class with `ChumpyStandIn`, which keeps the pickled
state; afterwards each stand-in is replaced by its numeric value: a ``Ch`` holds its array in the
state key ``x``; reordering objects (``Select``, ``transpose``, ``Reshape``, ...) hold their operand
in ``a`` plus their arguments and are evaluated with numpy.  Only numpy, scipy.sparse and a few
builtins may be instantiated; anything else is refused.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse

REQUIRED_SHAPES = {
    "f": (1538, 3),
    "v_template": (778, 3),
    "shapedirs": (778, 3, 10),
    "J_regressor": (16, 778),
    "hands_components": (45, 45),
    "hands_mean": (45,),
    "posedirs": (778, 3, 135),
    "kintree_table": (2, 16),
    "weights": (778, 16),
}


class MANOFileError(ValueError):
    """A model file that cannot be read or lacks a key / has a wrong shape."""


class ChumpyStandIn:
    """Captures a pickled chumpy object; `value()` gives its numeric array."""

    chumpy_name = "chumpy.ch.Ch"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.__dict__.setdefault("_state", {})

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__["_state"] = dict(state)

    def value(self) -> np.ndarray:
        st = self.__dict__.get("_state", {})
        kind = self.chumpy_name.rsplit(".", 1)[-1]
        if kind == "AtleastNd":
            return getattr(np, f"atleast_{st['ndims']}d")(np.asarray(_numeric(st["x"])))
        if st.get("a") is None:
            if st.get("x") is None:
                raise MANOFileError(f"chumpy object {self.chumpy_name} has no stored value "
                                    f"(state keys {sorted(st)})")
            return np.asarray(_numeric(st["x"]))
        a = np.asarray(_numeric(st["a"]))
        if kind == "Select":
            out = a.ravel()[np.asarray(st["idxs"]).ravel()]
            return out.reshape(st["preferred_shape"]) if "preferred_shape" in st else out
        if kind == "transpose":
            return np.ascontiguousarray(np.transpose(a, axes=st.get("axes")))
        if kind == "Reshape":
            return a.reshape(st["newshape"])
        if kind == "swapaxes":
            return np.swapaxes(a, st["axis1"], st["axis2"])
        if kind == "rollaxis":
            return np.rollaxis(a, st["axis"], st.get("start", 0))
        if kind == "Tile":
            return np.tile(a, st["reps"])
        if kind == "Repeat":
            return np.repeat(a, st["repeats"], st.get("axis"))
        raise MANOFileError(f"unsupported chumpy class {self.chumpy_name}: cannot compute its value")


def _numeric(obj):
    """Replace chumpy stand-ins (recursively in containers) by their values."""
    if isinstance(obj, ChumpyStandIn):
        return obj.value()
    if isinstance(obj, dict):
        return {k: _numeric(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numeric(v) for v in obj)
    return obj


_standin_classes: dict[str, type] = {}


def _chumpy_class(module: str, name: str) -> type:
    full = f"{module}.{name}"
    if full not in _standin_classes:
        _standin_classes[full] = type(f"ChumpyStandIn_{name}", (ChumpyStandIn,), {"chumpy_name": full})
    return _standin_classes[full]


_ALLOWED_NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_ALLOWED_BUILTINS = {"object", "set", "frozenset", "slice", "complex", "list", "dict", "tuple"}


class _MANOUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_class(module, name)
        if module.startswith("numpy") and name in _ALLOWED_NUMPY:
            if module.startswith("numpy.core"):  # Python-2 era path; numpy 2 moved it
                module = "numpy._core" + module[len("numpy.core"):] if hasattr(np, "_core") else module
            return super().find_class(module, name)
        if module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array")):
            return getattr(scipy.sparse, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return super().find_class("copyreg", name)
        if module == "_codecs" and name == "encode":  # bytes written by Python 3, protocol 2
            return super().find_class(module, name)
        if module in ("__builtin__", "builtins") and name in _ALLOWED_BUILTINS:
            return super().find_class("builtins", name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
        data = _MANOUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # any failure here means the file is not a readable MANO pickle
        raise MANOFileError(f"{path}: not a readable MANO pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise MANOFileError(f"{path}: expected a pickled dict of arrays, found {type(data).__name__}")
    return {str(k): _numeric(v) for k, v in data.items()}


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise MANOFileError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e


def validate_mano_arrays(arrays: dict, source: str) -> None:
    """Raise MANOFileError naming `source` and the key on a missing key or a wrong shape."""
    for key, shape in REQUIRED_SHAPES.items():
        if key not in arrays or arrays[key] is None:
            raise MANOFileError(f"{source}: missing key '{key}' (expected shape {shape})")
        got = tuple(arrays[key].shape) if hasattr(arrays[key], "shape") else None
        if got != shape:
            raise MANOFileError(f"{source}: key '{key}' has shape {got}, expected {shape}")


def load_mano_arrays(path: str | Path) -> dict[str, np.ndarray | scipy.sparse.spmatrix]:
    """MANO model arrays from the official .pkl (no chumpy needed) or a converted .npz.

    Returns every key of the file with numeric values (J_regressor stays scipy.sparse when the
    pickle stores it so); the keys of `REQUIRED_SHAPES` are checked.
    """
    path = Path(path)
    if not path.is_file():
        raise MANOFileError(f"{path}: file not found")
    arrays = _read_npz(path) if path.suffix == ".npz" else _read_pickle(path)
    out = {}
    for k, v in arrays.items():
        if isinstance(v, (np.ndarray, np.generic)) or scipy.sparse.issparse(v):
            out[k] = v
        elif isinstance(v, (list, tuple)) and k in REQUIRED_SHAPES:
            out[k] = np.asarray(v)
        else:
            out[k] = v
    validate_mano_arrays(out, str(path))
    return out


def save_mano_npz(arrays: dict, path: str | Path) -> None:
    """Write the numeric arrays of a MANO-layout dict to .npz (sparse matrices densified)."""
    plain = {}
    for k, v in arrays.items():
        if scipy.sparse.issparse(v):
            v = v.toarray()
        if isinstance(v, (np.ndarray, np.generic)) and v.dtype != object:
            plain[k] = np.asarray(v)
    np.savez_compressed(path, **plain)
