"""The validation list held out of a training list (balanced_experts.holdout), on real list files."""

import numpy as np
import pytest

from balanced_experts.holdout import held_out, main
from balanced_experts.lists import ImageList, ListFormatError, read_list, write_list

COUNTS = [12, 7, 6, 5, 4, 3, 2]  # per class


def training_list(path, counts=COUNTS):
    labels = np.repeat(np.arange(len(counts)), counts)
    order = np.random.default_rng(0).permutation(len(labels))  # classes interleaved, as real lists are
    write_list(path, [f"c{labels[i]}/{i}.jpg" for i in order], labels[order])
    return path


def test_each_class_gives_three_or_half_and_both_lists_keep_the_file_order(tmp_path):
    source = training_list(tmp_path / "train.txt")
    main([str(source), "--train-out", str(tmp_path / "kept.txt"), "--val-out", str(tmp_path / "val.txt")])
    full, kept, val = (read_list(tmp_path / f"{name}.txt") for name in ("train", "kept", "val"))
    assert val.class_counts().tolist() == [3, 3, 3, 2, 2, 1, 1]  # min(3, n // 2)
    assert (kept.class_counts() + val.class_counts()).tolist() == COUNTS
    assert sorted(kept.paths + val.paths) == sorted(full.paths)
    position = {path: i for i, path in enumerate(full.paths)}
    for part in (kept, val):
        assert [position[p] for p in part.paths] == sorted(position[p] for p in part.paths)
        assert all(full.labels[position[p]] == label for p, label in zip(part.paths, part.labels))


def test_the_same_seed_holds_out_the_same_images_and_another_seed_others(tmp_path):
    image_list = read_list(training_list(tmp_path / "train.txt"))
    first, again, other = (held_out(image_list, 3, seed)[1] for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(held_out(image_list, per_class=1)[1]) == len(COUNTS)


def test_a_class_of_one_image_is_named(tmp_path):
    image_list = read_list(training_list(tmp_path / "train.txt", [4, 1, 3, 1]))
    with pytest.raises(ListFormatError, match=r"train.txt: classes 1, 3 have a single training image"):
        held_out(image_list)
    with pytest.raises(ValueError, match="per_class must be at least 1"):
        held_out(ImageList(["a", "b"], np.array([0, 0])), per_class=0)


def test_the_command_names_a_missing_list_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "absent.txt"), "--train-out", "k.txt", "--val-out", "v.txt"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "absent.txt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "k.txt").exists()
