import numpy as np
import pytest

from balanced_experts.lists import ListFormatError, check_images_exist, check_labels_cover, read_list, write_list
from balanced_experts.splits import SplitRule, class_table, split_class_ids, split_summary
from conftest import SHARED_DATA

PLACES = SHARED_DATA / "places_lt"
IMAGENET = SHARED_DATA / "imagenet_lt"


def test_split_rule_standard_and_inclusive():
    counts = np.array([500, 101, 100, 99, 20, 19, 5])
    standard = SplitRule()
    assert list(standard.assign(counts)) == ["many", "many", "medium", "medium", "medium", "few", "few"]
    original = SplitRule(many_inclusive=True)
    assert list(original.assign(counts)) == ["many", "many", "many", "medium", "medium", "few", "few"]
    few_inclusive = SplitRule(few_inclusive=True)
    assert few_inclusive.assign([20])[0] == "few"


def test_split_rule_rejects_crossed_thresholds():
    with pytest.raises(ValueError, match="few_threshold"):
        SplitRule(many_threshold=10, few_threshold=20)


def test_class_table_counts_from_labels():
    table = class_table([0, 0, 0, 1, 2, 2], 4, SplitRule(many_threshold=2, few_threshold=1))
    assert table["train_count"].tolist() == [3, 1, 2, 0]
    assert table["split"].tolist() == ["many", "medium", "medium", "few"]
    assert split_class_ids(table, "medium").tolist() == [1, 2]


def test_read_list_reports_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a/x.jpg 0\nb/y.jpg 1\nbroken-line\n")
    with pytest.raises(ListFormatError, match=r"train.txt:3"):
        read_list(path)
    path.write_text("a/x.jpg 0\nb/y.jpg one\n")
    with pytest.raises(ListFormatError, match=r"train.txt:2: label 'one'"):
        read_list(path)


def test_list_round_trip_and_label_coverage(tmp_path):
    path = tmp_path / "val.txt"
    write_list(path, ["a b/with space.png", "c.png"], [0, 2])
    image_list = read_list(path)
    assert image_list.paths == ["a b/with space.png", "c.png"]
    assert image_list.labels.tolist() == [0, 2]
    with pytest.raises(ListFormatError, match="class ids 1"):
        check_labels_cover(image_list, 3)


def test_listed_images_must_exist_the_error_names_the_first_line(tmp_path):
    (tmp_path / "images/a").mkdir(parents=True)
    (tmp_path / "images/a/x.jpg").touch()
    (tmp_path / "images/a/folder.jpg").mkdir()  # a folder is no image
    path = tmp_path / "train.txt"
    path.write_text("a/x.jpg 0\n# a comment\na/y.jpg 1\nb/z.jpg 1\na/folder.jpg 0\n")
    with pytest.raises(ListFormatError) as error:
        check_images_exist(read_list(path), tmp_path / "images")
    assert str(error.value) == (f"{path}:3: image {tmp_path / 'images/a/y.jpg'} does not exist "
                                "(2 more listed images are missing)")
    path.write_text("a/x.jpg 0\n./a/../a/x.jpg 0\n")
    check_images_exist(read_list(path), tmp_path / "images")


@pytest.mark.skipif(not PLACES.exists(), reason="shared Places-LT lists not present")
def test_places_lt_split_statistics():
    train = read_list(PLACES / "Places_LT_train.txt")
    assert train.num_classes == 365
    check_labels_cover(train, 365)
    standard = split_summary(class_table(train.labels, 365, SplitRule()))
    assert standard == {"many": 131, "medium": 163, "few": 71}
    original = split_summary(class_table(train.labels, 365, SplitRule(many_inclusive=True)))
    assert original == {"many": 132, "medium": 162, "few": 71}
    for split, per_class in (("val", 20), ("test", 100)):
        image_list = read_list(PLACES / f"Places_LT_{split}.txt")
        assert set(image_list.class_counts(365).tolist()) == {per_class}


@pytest.mark.skipif(not IMAGENET.exists(), reason="shared ImageNet-LT lists not present")
def test_imagenet_lt_val_test_lists_parse():
    for split, per_class in (("val", 20), ("test", 50)):
        image_list = read_list(IMAGENET / f"ImageNet_LT_{split}.txt")
        assert image_list.num_classes == 1000
        check_labels_cover(image_list, 1000)
        assert set(image_list.class_counts(1000).tolist()) == {per_class}
