"""Reading pickled numpy arrays without running arbitrary code."""

from __future__ import annotations

import codecs
import io
import pickle
from typing import IO, Any

import numpy as np

from ..errors import InputError


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn
    return fn


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): lambda: codecs.encode,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that admits plain containers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            )
        return factory()


def load_numpy_pickle(stream: IO[bytes] | bytes, source: str = "pickle", **kwargs: Any) -> Any:
    """Unpickle ``stream`` admitting only numpy arrays and builtin containers."""
    if isinstance(stream, bytes):
        stream = io.BytesIO(stream)
    try:
        return NumpyOnlyUnpickler(stream, **kwargs).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise InputError(f"{source}: not a numpy-only pickle: {error}") from None
