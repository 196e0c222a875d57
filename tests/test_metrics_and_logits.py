import numpy as np
import pandas as pd
import pytest

from balanced_experts.experts import REJECT
from balanced_experts.lists import ImageList
from balanced_experts.logits import (LogitsTable, check_aligned, logits_meta, model_logits_table, read_logits,
                                     write_logits)
from balanced_experts.metrics import four_fold_accuracy, per_class_accuracy


def test_four_fold_slicing_hand_labelled():
    class_split = ["many", "many", "medium", "few"]
    labels = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    preds = [0, 1, 1, 1, 2, 0, 0, 3, 0, 0]
    # many: samples 0-3 -> 3/4 right; medium: samples 4-6 -> 1/3; few: 7-9 -> 1/3; all 5/10.
    acc = four_fold_accuracy(preds, labels, class_split)
    assert acc["many"] == pytest.approx(75.0)
    assert acc["medium"] == pytest.approx(100 / 3)
    assert acc["few"] == pytest.approx(100 / 3)
    assert acc["all"] == pytest.approx(50.0)
    assert per_class_accuracy(preds, labels, 5)[:4].tolist() == pytest.approx([50.0, 100.0, 100 / 3, 100 / 3])
    assert np.isnan(per_class_accuracy(preds, labels, 5)[4])


def test_empty_split_is_nan():
    acc = four_fold_accuracy([0, 1], [0, 1], ["many", "medium", "few"])
    assert np.isnan(acc["few"]) and acc["all"] == 100.0


def make_table(n=5, model="few", seed=0):
    rng = np.random.default_rng(seed)
    return LogitsTable(
        logits=rng.normal(size=(n, 3)).astype(np.float32),
        labels=np.array([4, 7, 0, 4, 1][:n]),
        sample_ids=np.arange(n),
        paths=[f"images/{i}.png" for i in range(n)],
        output_class_ids=np.array([4, 7, REJECT]),
        meta={"model": model, "split": "val", "num_classes": 9, "open_ratio": 8.0},
    )


def test_parquet_round_trip_and_pandas(tmp_path):
    table = make_table()
    path = tmp_path / "few" / "val.parquet"
    write_logits(path, table)
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["sample_id", "path", "label", "logit_4", "logit_7", "logit_reject"]
    assert frame["logit_7"].dtype == np.float32
    back = read_logits(path)
    assert np.array_equal(back.logits, table.logits)
    assert np.array_equal(back.labels, table.labels)
    assert back.paths == table.paths
    assert back.output_class_ids.tolist() == [4, 7, REJECT]
    assert back.class_ids.tolist() == [4, 7]
    assert back.meta["open_ratio"] == 8.0 and back.is_expert
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_models_logits_file_records_its_outputs_from_its_weights(tmp_path):
    """In list order, each row named by its position; the outputs and the open ratio are the
    weights' (an expert's), the class count the dataset's; the base model has no open ratio."""
    images = ImageList([f"train/{i}.png" for i in range(4)], np.array([4, 7, 0, 4]))
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    expert = {"model": "few", "backbone": {"name": "resnet_cifar8"}, "num_classes": 9,
              "output_class_ids": [4, 7, REJECT], "best_epoch": 2, "best_val_acc": 50.0, "open_ratio": 8.0,
              "num_learnable": 3}
    write_logits(tmp_path / "few.parquet", model_logits_table(logits, images, "few", "train", expert))
    back = read_logits(tmp_path / "few.parquet")
    assert back.meta == {"model": "few", "split": "train", "num_classes": 9, "open_ratio": 8.0,
                         "output_class_ids": [4, 7, REJECT]}
    assert back.sample_ids.tolist() == [0, 1, 2, 3] and back.paths == images.paths
    assert back.labels.tolist() == [4, 7, 0, 4] and np.array_equal(back.logits, logits)
    base = {**expert, "model": "base", "output_class_ids": list(range(9))}
    del base["open_ratio"], base["num_learnable"]
    table = model_logits_table(np.zeros((4, 9), np.float32), images, "base", "test", base)
    assert table.meta == {"model": "base", "split": "test", "num_classes": 9} and not table.is_expert


def test_logits_read_in_column_blocks_are_the_file_read_at_once(tmp_path):
    """read_logits decodes the logits columns a block at a time into one array: blocks of
    one column, of a few (the last one short) and of all give the file's logits, bit for bit."""
    rng = np.random.default_rng(3)
    n, ids = 37, np.array([0, 2, 3, 5, 6, 8, 9, REJECT])
    table = LogitsTable(logits=rng.normal(size=(n, len(ids))).astype(np.float32) * 1e3, labels=rng.integers(0, 10, n),
                        sample_ids=np.arange(n), paths=[f"test/{i}.jpg" for i in range(n)], output_class_ids=ids,
                        meta={"model": "few", "split": "test", "num_classes": 10, "open_ratio": 4.0})
    path = tmp_path / "few" / "test.parquet"
    write_logits(path, table)
    whole = read_logits(path, block_columns=len(ids))
    assert whole.logits.flags.c_contiguous and whole.logits.dtype == np.float32
    assert np.array_equal(whole.logits, table.logits)
    for block in (1, 3, 512):
        back = read_logits(path, block_columns=block)
        assert np.array_equal(back.logits, whole.logits) and back.logits.flags.c_contiguous
        assert np.array_equal(back.labels, whole.labels) and np.array_equal(back.sample_ids, whole.sample_ids)
        assert back.paths == whole.paths and back.meta == whole.meta
    assert logits_meta(path) == whole.meta
    # pandas reads the same file, a column per output
    assert np.array_equal(pd.read_parquet(path).filter(like="logit_").to_numpy(), table.logits)


def test_alignment_check():
    a, b = make_table(model="many"), make_table(model="few", seed=1)
    check_aligned({"many": a, "few": b})
    shuffled = make_table(model="few")
    shuffled.sample_ids = shuffled.sample_ids[::-1].copy()
    with pytest.raises(ValueError, match="not row-aligned"):
        check_aligned({"many": a, "few": shuffled})
    shorter = make_table(n=4)
    with pytest.raises(ValueError, match="not row-aligned"):
        check_aligned({"many": a, "few": shorter})
