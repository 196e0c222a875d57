"""Logits of one model on one data split: computed in list order, stored as Parquet.

Columns: ``sample_id`` (position in the split's list file), ``path``, ``label`` (global
class id), then one float32 column per model output named ``logit_<class id>`` and, for
an expert, ``logit_reject``. The schema metadata key ``balanced_experts`` holds JSON with
the model name, the split, ``output_class_ids`` (reject = -1), ``num_classes``, for an
expert its ``open_ratio`` and for a peer its ``prior`` (the class prior its probabilities
carry, from its weights). Rows of every model on a split are in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .device import autocast
from .experts import REJECT
from .faults import ArtifactError
from .files import reading, replacing

META_KEY = b"balanced_experts"
CARRIED_META = ("open_ratio", "prior")
"""What a logits file carries of its model's weights' metadata, where the model has it."""


@dataclass
class LogitsTable:
    logits: np.ndarray  # N x M float32
    labels: np.ndarray  # N int64, global class ids
    sample_ids: np.ndarray  # N int64
    paths: list[str]
    output_class_ids: np.ndarray  # M int64; REJECT for the reject output
    meta: dict

    @property
    def is_expert(self) -> bool:
        return bool((self.output_class_ids == REJECT).any())

    @property
    def class_ids(self) -> np.ndarray:
        """Global class ids of the non-reject outputs."""
        return self.output_class_ids[self.output_class_ids != REJECT]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def model_logits_table(logits: np.ndarray, image_list, model: str, split: str, weights_meta: dict) -> LogitsTable:
    """The logits file's table of ``model`` on every entry of one split's list
    (:class:`balanced_experts.lists.ImageList`), in list order: its outputs and metadata
    from the model's weights (``weights_meta``)."""
    return LogitsTable(
        logits=logits,
        labels=image_list.labels,
        sample_ids=np.arange(len(image_list)),
        paths=image_list.paths,
        output_class_ids=np.asarray(weights_meta["output_class_ids"]),
        meta={"model": model, "split": split, "num_classes": weights_meta["num_classes"],
              **{key: weights_meta[key] for key in CARRIED_META if key in weights_meta}},
    )


def column_names(output_class_ids) -> list[str]:
    return [("logit_reject" if c == REJECT else f"logit_{int(c)}") for c in output_class_ids]


def write_logits(path: str | Path, table: LogitsTable) -> None:
    """Write atomically: a killed job never leaves a truncated Parquet file behind."""
    logits = np.ascontiguousarray(table.logits, dtype=np.float32)
    arrays = [
        pa.array(np.asarray(table.sample_ids, dtype=np.int64)),
        pa.array(table.paths, type=pa.string()),
        pa.array(np.asarray(table.labels, dtype=np.int64)),
    ] + [pa.array(logits[:, j]) for j in range(logits.shape[1])]
    names = ["sample_id", "path", "label"] + column_names(table.output_class_ids)
    meta = dict(table.meta, output_class_ids=[int(c) for c in table.output_class_ids])
    schema = pa.schema([pa.field(n, a.type) for n, a in zip(names, arrays)],
                       metadata={META_KEY: json.dumps(meta).encode()})
    # Logits are distinct floats: dictionary encoding only grows them (119 instead of 81 MB
    # at 20,000 x 1,003) and, with per-column min/max statistics nobody filters on, made
    # writing 6x slower.
    with replacing(path) as tmp:
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), tmp,
                       use_dictionary=False, write_statistics=["sample_id", "label"])


READ_BLOCK_COLUMNS = 512
"""Logits columns :func:`read_logits` decodes at a time."""


def logits_meta(path: str | Path) -> dict:
    """A logits file's metadata (the schema's: no column is read); :class:`ArtifactError`
    (naming the file and the fix) if it is damaged or not one of ours."""
    parquet, meta = _open(path)
    parquet.close()
    return meta


def _open(path: str | Path) -> tuple[pq.ParquetFile, dict]:
    with reading(path, "Parquet file"):
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ArtifactError(path, f"a Parquet file, but not logits of this workflow (no "
                                  f"'{META_KEY.decode()}' metadata)")
    try:
        meta = json.loads(raw)
        np.asarray(meta["output_class_ids"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:  # json, a missing key
        raise ArtifactError(path, f"logits whose columns do not match their metadata ({error})") from None
    return parquet, meta


def read_logits(path: str | Path, block_columns: int = READ_BLOCK_COLUMNS) -> LogitsTable:
    """A logits file; :class:`ArtifactError` (naming the file and the fix) if it is damaged
    or not one of ours.

    The logits columns are decoded ``block_columns`` at a time into one preallocated N x M
    array, so reading costs the array and one block, not the whole table and its copies.
    """
    parquet, meta = _open(path)
    with parquet:
        return _read(path, parquet, meta, max(1, block_columns))


def _read(path, parquet: pq.ParquetFile, meta: dict, block_columns: int) -> LogitsTable:
    output_class_ids = np.asarray(meta["output_class_ids"], dtype=np.int64)
    names = column_names(output_class_ids)
    present = set(parquet.schema_arrow.names)
    for name in ("label", "sample_id", "path", *names):
        if name not in present:
            error = KeyError(f'Field "{name}" does not exist in schema')
            raise ArtifactError(path, f"logits whose columns do not match their metadata ({error})")
    logits = np.empty((parquet.metadata.num_rows, len(names)), dtype=np.float32)
    out = torch.from_numpy(logits)
    for start in range(0, len(names), block_columns):
        block = names[start:start + block_columns]
        with reading(path, "Parquet file"):
            table = parquet.read(columns=block, use_threads=True)
        try:
            # Columns stacked as rows, then one transposing copy into place (torch's uses
            # every thread): faster than writing each column into the row-major array.
            by_column = np.stack([table.column(n).to_numpy() for n in block]).astype(np.float32, copy=False)
        except (KeyError, TypeError, ValueError) as error:  # a column that is not numbers
            raise ArtifactError(path, f"logits whose columns do not match their metadata ({error})") from None
        out[:, start:start + len(block)] = torch.from_numpy(by_column).T
        del table, by_column
    with reading(path, "Parquet file"):
        columns = parquet.read(columns=["label", "sample_id", "path"])
    return LogitsTable(
        logits=logits,
        labels=columns.column("label").to_numpy().astype(np.int64),
        sample_ids=columns.column("sample_id").to_numpy().astype(np.int64),
        paths=columns.column("path").to_pylist(),
        output_class_ids=output_class_ids,
        meta=meta,
    )


def check_aligned(tables: dict[str, LogitsTable]) -> None:
    """All tables must list the same samples, in the same order, with the same labels."""
    names = list(tables)
    first = tables[names[0]]
    for name in names[1:]:
        other = tables[name]
        if len(other.sample_ids) != len(first.sample_ids) or not (
            np.array_equal(other.sample_ids, first.sample_ids) and np.array_equal(other.labels, first.labels)
        ):
            raise ValueError(f"logits of {name!r} and {names[0]!r} are not row-aligned")


@torch.no_grad()
def predict(model: torch.nn.Module, batches, num_samples: int, num_outputs: int, amp: bool = False,
            compile: bool = False, features: bool = False) -> np.ndarray:
    """Logits of every sample, in batch order, written into one preallocated array
    (``features``: the model's penultimate features instead, ``num_outputs`` wide).

    The logits stay on the device until the end (one preallocated device buffer, one copy
    back), so the device never waits for a per-batch host copy. ``amp``: bf16 autocast on
    CUDA; the stored logits are float32 either way.
    """
    model.eval()
    forward = model.features if features else model
    forward = torch.compile(forward) if compile else forward
    out: torch.Tensor | None = None
    start = 0
    for x, _ in batches:
        with autocast(x.device, amp):
            logits = forward(x)
        if out is None:
            out = torch.empty((num_samples, num_outputs), dtype=torch.float32, device=x.device)
        if start + len(logits) > num_samples:
            raise RuntimeError(f"predicted more than the expected {num_samples} samples")
        out[start:start + len(logits)] = logits.float()
        start += len(logits)
    if start != num_samples:
        raise RuntimeError(f"predicted {start} samples, expected {num_samples}")
    if out is None:
        return np.empty((0, num_outputs), dtype=np.float32)
    return out.cpu().numpy()
