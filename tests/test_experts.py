import numpy as np
import pytest

from balanced_experts.experts import (REJECT, expert_training_set, expert_validation_set,
                                      output_class_ids, small_reject_sample)


def long_tail_labels():
    counts = [400, 200, 100, 50, 25, 12, 6, 3]
    return np.repeat(np.arange(len(counts)), counts)


def test_training_set_has_split_images_and_ratio_of_reject():
    labels = long_tail_labels()
    split = np.array([5, 6, 7])  # 21 images
    for open_ratio in (1, 2, 3):
        data = expert_training_set(labels, split, open_ratio, seed=0)
        k = len(split)
        inside = data.targets < k
        # Every image of the split, with targets remapped to 0..k-1 in class-id order.
        assert sorted(data.indices[inside].tolist()) == np.flatnonzero(np.isin(labels, split)).tolist()
        assert np.array_equal(labels[data.indices[inside]], split[data.targets[inside]])
        # Reject images: round(N_split / open_ratio), all from other classes, no duplicates.
        assert data.num_reject == round(21 / open_ratio)
        assert not np.isin(labels[data.indices[~inside]], split).any()
        assert len(set(data.indices.tolist())) == len(data)


def test_the_reject_count_rounds_or_floors_as_the_original():
    labels = long_tail_labels()
    split = np.array([5, 6, 7])  # 21 images: 21 / 8 = 2.625
    assert expert_training_set(labels, split, 8, seed=0).num_reject == 3
    floored = expert_training_set(labels, split, 8, seed=0, count="floor")
    assert floored.num_reject == 21 // 8 == 2
    with pytest.raises(ValueError, match="reject_count must be one of round, floor, got 'ceil'"):
        expert_training_set(labels, split, 8, seed=0, count="ceil")


def test_reject_sample_is_seeded_and_follows_image_distribution():
    labels = long_tail_labels()
    a = expert_training_set(labels, [3, 4], 1, seed=7)
    b = expert_training_set(labels, [3, 4], 1, seed=7)
    c = expert_training_set(labels, [3, 4], 1, seed=8)
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(b.indices, c.indices)
    # "images" sampling draws uniformly over images: the reject set follows the other
    # classes' training counts (head classes dominate it).
    labels = np.repeat(np.arange(4), [3000, 1000, 500, 500])
    data = expert_training_set(labels, [3], 1, seed=0)  # 500 reject of 4500 images
    reject_labels = labels[data.indices[data.targets == 1]]
    share = np.bincount(reject_labels, minlength=3) / len(reject_labels)
    assert np.allclose(share, [3000 / 4500, 1000 / 4500, 500 / 4500], atol=0.05)


def test_class_balanced_reject_sampling():
    labels = long_tail_labels()
    data = expert_training_set(labels, [0], 400 / 30, seed=0, sampling="classes")  # 30 reject images
    reject_labels = labels[data.indices[data.targets == 1]]
    counts = np.bincount(reject_labels, minlength=8)[1:]
    # 7 other classes, 30 images: as even as the smallest class (3 images) allows.
    assert counts.sum() == 30
    assert counts[-1] == 3
    assert counts[:-1].max() - counts[:-1].min() <= 1


def test_open_ratio_below_one_is_rejected():
    with pytest.raises(ValueError, match="open_ratio"):
        expert_training_set(long_tail_labels(), [0], 0.5, seed=0)


def test_validation_set_is_one_to_one():
    labels = np.repeat(np.arange(10), 20)
    data = expert_validation_set(labels, [2, 5, 9], seed=0)
    assert (data.targets < 3).sum() == 60
    assert data.num_reject == 60
    assert output_class_ids([9, 2, 5]) == [2, 5, 9, REJECT]


@pytest.mark.parametrize("split, open_ratio, warned", [
    ([6, 7], 16, "1 reject image (open_ratio 16), fewer than the 3 of the split's smallest class: too few to "
                 "teach the reject output; an open_ratio of at most 3 draws 3 or more"),
    ([6, 7], 3, None),  # 3 reject images, as many as class 7 has
    ([5, 6, 7], 8, None),  # round(21 / 8) = 3, not fewer than class 7's 3
    ([1, 2], 16, "19 reject images (open_ratio 16), fewer than the 100 of the split's smallest class: too few to "
                 "teach the reject output; an open_ratio of at most 3 draws 100 or more"),
    ([0, 1], 1, "196 reject images (open_ratio 1), fewer than the 200 of the split's smallest class: too few to "
                "teach the reject output; the other classes have only 196 training images"),
    ([6, 7], 100, "0 reject images (open_ratio 100), fewer than the 3 of the split's smallest class: too few to "
                  "teach the reject output; an open_ratio of at most 3 draws 3 or more"),
])
def test_a_reject_sample_smaller_than_the_smallest_class_is_named(split, open_ratio, warned):
    labels = long_tail_labels()
    data = expert_training_set(labels, split, open_ratio, seed=0)
    assert small_reject_sample(labels, split, data, open_ratio) == warned
    if warned and "at most" in warned:  # the advice holds: that open ratio draws enough
        advised = float(warned.rsplit("at most ", 1)[1].split()[0])
        assert small_reject_sample(labels, split, expert_training_set(labels, split, advised, seed=0), advised) is None
