"""A ``.npy`` file of rows whose count is known only at the end (the Cluster's ``angles_out``, and
``vectors_out``): rows appended in order, the header written last."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NpyAppender:
    """A ``.npy`` file written one block of rows at a time; its header (with the final row count) is
    written last, into space reserved at the start (format 1.0, a 128-byte header)."""

    HEADER = 128

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.rows, self.inner = path, np.dtype(dtype), 0, None
        self.file = open(path, "wb")
        self.file.write(b"\0" * self.HEADER)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.inner = block.shape[1:]
        self.file.write(block.tobytes())
        self.rows += block.shape[0]

    def finish(self) -> np.ndarray:
        shape = (self.rows, *(self.inner or ()))
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": shape}).encode("latin1")
        padded = header.ljust(self.HEADER - 10 - 1) + b"\n"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded)
        self.file.close()
        return np.load(self.path, mmap_mode="r")
