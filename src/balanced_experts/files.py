"""Reading and writing the workflow's own files safely.

Reading: a file of ours that fails to load is an :class:`~balanced_experts.faults.ArtifactError`
that says what is wrong with it (:func:`reading`, :func:`unreadable`); torch files load
tensors and plain data only (:func:`load_torch_file`). Writing: atomically
(:func:`replacing`, :func:`replacing_folder`, :func:`save_torch_file`), so a failed or
killed job leaves no half-written file behind, and an OS error names the file
(:func:`writing`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
from pathlib import Path

from .faults import ArtifactError

# -- reading ---------------------------------------------------------------------------------

# How each kind of file starts: one that does not is not of that kind at all.
_SIGNATURES = {"torch file": b"PK\x03\x04", "Parquet file": b"PAR1", ".npy array": b"\x93NUMPY"}


def unreadable(path: str | Path, kind: str, error: BaseException | None = None) -> ArtifactError:
    """The :class:`ArtifactError` of ``path``, a ``kind`` file (a key of ``_SIGNATURES``)
    that failed to load with ``error``. The library's own message is not repeated: it is
    often a traceback's worth, and some advise loading the file unsafely."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if size == 0:
        problem = "the file is empty"
    elif not head.startswith(_SIGNATURES[kind]):
        problem = f"not a {kind}: overwritten, or not written by this workflow"
    elif isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error.__context__):
        problem = ("it holds pickled Python objects besides tensors, which this workflow never "
                   "writes; it is not loaded, since that could run code from the file")
    else:
        problem = f"a damaged {kind} ({size:,} bytes): cut short or corrupted"
    return ArtifactError(path, problem)


@contextlib.contextmanager
def reading(path: str | Path, kind: str):
    """Turn a failure of the block to load ``path`` (a ``kind`` file of this workflow) into
    an :class:`ArtifactError`. An OS error (permission denied, an I/O error) stays one,
    named after ``path``."""
    try:
        yield
    except ArtifactError:
        raise
    except OSError as error:
        # torch reports a file cut short as EINVAL without a file name
        if error.errno not in (None, errno.EINVAL):
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from None
        raise unreadable(path, kind, error) from None
    except Exception as error:
        raise unreadable(path, kind, error) from None


def load_torch_file(path: str | Path):
    """A torch file of this workflow, loaded safely: tensors and plain data only
    (``weights_only=True``), never objects that could run code."""
    import torch  # here, not at the top: the jobs that read and write no torch file start without it

    with reading(path, "torch file"):
        return torch.load(path, map_location="cpu", weights_only=True)


# -- writing ---------------------------------------------------------------------------------

@contextlib.contextmanager
def writing(path: str | Path):
    """Name ``path`` in an OS error of the block that names no file (a failed write or
    flush: no space left on device) or only a temporary sibling of ``path``."""
    try:
        yield
    except OSError as error:
        named = Path(error.filename) if isinstance(error.filename, (str, os.PathLike)) else None
        path = Path(path)
        if named is None or (named.parent == path.parent and named.name.startswith(path.name)):
            code = error.errno
            raise OSError(code, os.strerror(code) if code else str(error), str(path)) from None
        raise


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block
    succeeds and is removed when it fails, so ``path`` is never half-written (a killed job
    leaves at most the temporary file, which the next attempt overwrites)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # (a read-only file system refuses even this)
                tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def replacing_folder(folder: str | Path):
    """As :func:`replacing`, for a folder: yield an empty temporary sibling to fill, which
    replaces ``folder`` whole when the block succeeds and is removed when it fails. A
    temporary folder left by a killed job is removed when the next one starts."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    with writing(folder):
        try:
            tmp.mkdir(parents=True)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def save_torch_file(obj, path: str | Path) -> None:
    """``torch.save`` atomically (see :func:`replacing`); a failed write is the OS error
    beneath it (torch reports only "unexpected pos ...")."""
    import torch

    with replacing(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise
