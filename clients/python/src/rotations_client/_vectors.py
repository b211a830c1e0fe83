"""``vectors_out``: each row's vectors, as a stream's chunks bring them, appended to one ``.npy`` file
per condition (the target's at the path, the non-target's at ``<stem>.non_target.npy``), rows in the
order of the angles; the same for :class:`Client` (one stream) and :class:`Cluster` (its chunks in
corpus order), so both write the same bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, Union

from ._npy import NpyAppender
from ._options import VectorsOut
from ._types import RotationChunk

_DTYPES = {"float32": "<f4", "float16": "<f2"}


def condition_path(path: Path, condition: int) -> Path:
    """The target's file is ``path``; the non-target's ``<stem>.non_target.npy`` beside it."""
    return path if condition == 0 else path.with_name(path.stem + ".non_target.npy")


def write_vectors(
    chunks: Iterator[RotationChunk], vectors_out: Union[str, "os.PathLike[str]", VectorsOut]
) -> Iterator[RotationChunk]:
    """Passes ``chunks`` on, writing each one's vectors first; the files are complete (their headers
    written) once the final chunk has passed. A chunk's vectors must be one row per reported row, of
    the states and conditions asked for."""
    spec = VectorsOut.of(vectors_out)
    path, conditions = Path(os.fspath(spec.path)), spec.condition_indices()
    files: Dict[int, NpyAppender] = {c: NpyAppender(condition_path(path, c), _DTYPES[spec.dtype]) for c in conditions}
    states = None
    for chunk in chunks:
        if chunk.last:
            for appender in files.values():
                appender.finish()
        elif chunk.vectors is not None:
            v = chunk.vectors
            states = v.states if states is None else states
            rows = {d.shape[0] for d in v.data}
            if list(v.conditions) != conditions or v.states != states or rows != {len(chunk.sentences)}:
                raise ValueError(
                    f"vectors of conditions {v.conditions}, states {v.states} and rows {rows} at sentence "
                    f"{chunk.first_sentence}; expected {conditions}, {states} and {len(chunk.sentences)} rows"
                )
            for c, data in zip(v.conditions, v.data):
                files[c].append(data)
        elif chunk.sentences:
            raise ValueError(f"a chunk of {len(chunk.sentences)} rows at sentence {chunk.first_sentence} without vectors")
        yield chunk
