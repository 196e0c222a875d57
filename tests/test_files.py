"""Reading and writing the workflow's files safely (balanced_experts.files) and how an OS
error is named (balanced_experts.faults.describe_os_error), called directly on real files."""

import errno
import os

import pytest
import torch

from balanced_experts.faults import ArtifactError, describe_os_error, rebuild_command
from balanced_experts.files import load_torch_file, reading, replacing, save_torch_file, unreadable, writing


def test_an_os_error_is_its_path_and_the_meaning_of_its_errno():
    assert describe_os_error(OSError(errno.ENOSPC, "x", "results/x.pt")) == \
        "results/x.pt: No space left on device (ENOSPC)"
    assert describe_os_error(OSError(errno.EXDEV, "x", "a", None, "b")) == "a -> b: Invalid cross-device link (EXDEV)"
    assert describe_os_error(OSError(errno.EIO, "x")) == "Input/output error (EIO)"
    assert describe_os_error(OSError("no errno at all")) == "no errno at all"


def test_writing_names_the_file_where_the_error_names_none_or_a_temporary_sibling(tmp_path):
    target = tmp_path / "weights.pt"
    for raised in (OSError(errno.ENOSPC, "No space left on device"),  # a failed flush names no file
                   OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "weights.pt.tmp"))):
        with pytest.raises(OSError) as caught, writing(target):
            raise raised
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    other = OSError(errno.EACCES, "Permission denied", str(tmp_path / "elsewhere"))
    with pytest.raises(OSError) as caught, writing(target):
        raise other
    assert caught.value is other  # another file's error stays its own


def test_replacing_writes_whole_files_or_none(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with replacing(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_reading_turns_a_failed_load_into_the_files_artifact_error(tmp_path):
    path = tmp_path / "logits.parquet"
    path.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(ArtifactError) as caught, reading(path, "Parquet file"):
        raise ValueError("a library's long complaint")
    assert str(caught.value) == (f"{path}: a damaged Parquet file (104 bytes): cut short or corrupted; "
                                 f"rebuild it with: {rebuild_command(path)}")
    assert "complaint" not in str(caught.value)
    assert unreadable(path, "torch file").problem == "not a torch file: overwritten, or not written by this workflow"
    with pytest.raises(OSError) as caught, reading(path, "Parquet file"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert (caught.value.errno, caught.value.filename) == (errno.EACCES, str(path))


def test_torch_files_round_trip_atomically_and_load_tensors_only(tmp_path):
    path = tmp_path / "w.pt"
    save_torch_file({"w": torch.arange(3), "meta": {"model": "few"}}, path)
    loaded = load_torch_file(path)
    assert torch.equal(loaded["w"], torch.arange(3)) and loaded["meta"] == {"model": "few"}
    assert os.listdir(tmp_path) == ["w.pt"]
