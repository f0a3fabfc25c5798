"""MANO file loader: chumpy-free pickle reading, .npz round trip, documented errors."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from models.mano_io import REQUIRED_SHAPES, MANOFileError, load_mano_arrays, save_mano_npz

ROOT = Path(__file__).resolve().parents[1]

# A throwaway `chumpy` package imitating what the official file pickles: Ch keeps its array in
# `x` (its __getstate__ drops the weak-reference caches, like chumpy's), reordering objects keep
# their operand in `a` and their arguments as attributes.
FAKE_CHUMPY = {
    "chumpy/__init__.py": "from .ch import Ch\n",
    "chumpy/ch.py": textwrap.dedent("""
        class Ch(object):
            def __init__(self, x=None, **kw):
                self.x = x
                self._parents = {}
                self._cache = {'r': None}
                self._dirty_vars = set()
                self.__dict__.update(kw)
            def __getstate__(self):
                d = dict(self.__dict__)
                del d['_parents'], d['_cache']
                return d
    """),
    "chumpy/reordering.py": textwrap.dedent("""
        from .ch import Ch
        class Permute(Ch):
            pass
        class Select(Permute):
            pass
        class transpose(Permute):
            pass
        class Reshape(Permute):
            pass
    """),
}

WRITER = textwrap.dedent("""
    import pickle, sys
    import numpy as np, scipy.sparse
    import chumpy
    from chumpy.ch import Ch
    from chumpy.reordering import Select, transpose, Reshape
    ref = dict(np.load(sys.argv[1]))
    d = {
        'f': ref['f'].astype(np.uint32),
        'v_template': Ch(ref['v_template']),
        'shapedirs': Ch(ref['shapedirs']),
        'posedirs': transpose(a=Ch(np.ascontiguousarray(ref['posedirs'].transpose(2, 1, 0))), axes=(2, 1, 0)),
        'weights': Select(a=Ch(ref['weights'].ravel()[::-1].copy()), idxs=np.arange(778 * 16)[::-1].reshape(778, 16),
                          preferred_shape=(778, 16)),
        'J_regressor': scipy.sparse.csc_matrix(ref['J_regressor']),
        'hands_components': ref['hands_components'],
        'hands_mean': Reshape(a=Ch(ref['hands_mean'].reshape(15, 3)), newshape=(45,)),
        'kintree_table': ref['kintree_table'],
        'hands_coeffs': ref['hands_components'][:7],
        'bs_style': 'lbs', 'bs_type': 'lrotmin',
    }
    with open(sys.argv[2], 'wb') as fh:
        pickle.dump(d, fh, protocol=2)
""")

READER = textwrap.dedent("""
    import sys
    sys.modules['chumpy'] = None          # `import chumpy` fails in this process
    sys.path.insert(0, sys.argv[1])
    import numpy as np, scipy.sparse
    try:
        import chumpy
        raise SystemExit('chumpy importable')
    except ImportError:
        pass
    from models.mano_io import load_mano_arrays
    got = load_mano_arrays(sys.argv[2])
    ref = dict(np.load(sys.argv[3]))
    assert scipy.sparse.issparse(got['J_regressor'])
    for k in ref:
        g = got[k].toarray() if scipy.sparse.issparse(got[k]) else np.asarray(got[k])
        assert g.shape == ref[k].shape, (k, g.shape)
        assert np.array_equal(g, ref[k]), k
    assert got['hands_coeffs'].shape == (7, 45) and got['bs_style'] == 'lbs'
    print('LOADED', len(got))
""")


@pytest.fixture(scope="module")
def reference_npz(tmp_path_factory, standin_arrays) -> Path:
    path = tmp_path_factory.mktemp("mano") / "ref.npz"
    save_mano_npz({k: standin_arrays[k] for k in REQUIRED_SHAPES}, path)
    return path


def test_pickle_with_chumpy_objects_loads_without_chumpy(tmp_path, reference_npz):
    fake = tmp_path / "fake"
    for rel, text in FAKE_CHUMPY.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    pkl = tmp_path / "MANO_RIGHT.pkl"
    env_path = f"{fake}"
    subprocess.run([sys.executable, "-c", WRITER, str(reference_npz), str(pkl)], check=True,
                   env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert b"chumpy.ch" in pkl.read_bytes() and b"chumpy.reordering" in pkl.read_bytes()
    out = subprocess.run([sys.executable, "-c", READER, str(ROOT), str(pkl), str(reference_npz)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "LOADED" in out.stdout


def test_npz_round_trip(tmp_path, standin_arrays):
    path = tmp_path / "hand.npz"
    save_mano_npz(standin_arrays, path)
    got = load_mano_arrays(path)
    for k, v in standin_arrays.items():
        assert np.array_equal(got[k], v), k


def test_sparse_regressor_densified_in_npz(tmp_path, standin_arrays):
    arrays = dict(standin_arrays, J_regressor=scipy.sparse.csc_matrix(standin_arrays["J_regressor"]))
    save_mano_npz(arrays, tmp_path / "s.npz")
    got = load_mano_arrays(tmp_path / "s.npz")
    assert isinstance(got["J_regressor"], np.ndarray)
    assert np.array_equal(got["J_regressor"], standin_arrays["J_regressor"])


def test_missing_key_names_file_and_key(tmp_path, standin_arrays):
    path = tmp_path / "nokey.npz"
    save_mano_npz({k: v for k, v in standin_arrays.items() if k != "weights"}, path)
    with pytest.raises(MANOFileError, match=r"nokey\.npz.*missing key 'weights'"):
        load_mano_arrays(path)


def test_wrong_shape_names_file_and_key(tmp_path, standin_arrays):
    path = tmp_path / "bad.pkl"
    bad = dict(standin_arrays, shapedirs=standin_arrays["shapedirs"][:, :, :5])
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(MANOFileError, match=r"bad\.pkl.*'shapedirs'.*\(778, 3, 5\).*\(778, 3, 10\)"):
        load_mano_arrays(path)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x80\x02}q\x00(X\x01"])
def test_corrupt_file_names_file(tmp_path, content):
    path = tmp_path / "corrupt.pkl"
    path.write_bytes(content)
    with pytest.raises(MANOFileError, match=r"corrupt\.pkl: not a readable MANO pickle"):
        load_mano_arrays(path)


def test_corrupt_npz_and_missing_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK garbage")
    with pytest.raises(MANOFileError, match=r"x\.npz: not a readable \.npz"):
        load_mano_arrays(tmp_path / "x.npz")
    with pytest.raises(MANOFileError, match="file not found"):
        load_mano_arrays(tmp_path / "absent.pkl")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_classes_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"f": _Evil()}, protocol=2))
    with pytest.raises(MANOFileError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_mano_arrays(path)
    assert "pwned" not in capsys.readouterr().out


def test_converter_cli_writes_npz(tmp_path, standin_arrays, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    from convert_mano import main
    src = tmp_path / "MANO_RIGHT.pkl"
    src.write_bytes(pickle.dumps(dict(standin_arrays), protocol=2))
    assert main([str(src)]) == 0
    got = load_mano_arrays(tmp_path / "MANO_RIGHT.npz")
    assert np.array_equal(got["posedirs"], standin_arrays["posedirs"])
    assert main([str(tmp_path / "absent.pkl")]) == 2
    assert "file not found" in capsys.readouterr().err
