"""CIFAR-LT preparation from a real-format archive, and pretrained trunk weights."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet152

from balanced_experts.cifar import CifarArchiveError, CifarLTSpec, long_tail_selection, prepare, read_archive
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list
from balanced_experts.models import build_model
from balanced_experts.pretrained import PretrainedWeightsError, load_trunk_weights, map_resnet_keys
from realdata import caffe_style, make_cifar_archive, resnet10_state_dict


def test_cifar100_lt_profile_and_val_slice_on_full_size_labels():
    labels = np.repeat(np.arange(100), 500)
    np.random.default_rng(0).shuffle(labels)
    spec = CifarLTSpec(variant="cifar100", imbalance=100, val_per_class=20, seed=0)
    val, train, counts = long_tail_selection(labels, 100, spec)
    assert counts[0] == 480 and counts[-1] == 4 and counts.sum() == 10410
    assert np.bincount(labels[val], minlength=100).tolist() == [20] * 100
    assert np.bincount(labels[train], minlength=100).tolist() == counts.tolist()
    assert not set(val.tolist()) & set(train.tolist())
    again = long_tail_selection(labels, 100, spec)
    assert np.array_equal(again[0], val) and np.array_equal(again[1], train)
    other = long_tail_selection(labels, 100, CifarLTSpec(imbalance=10, seed=1))
    assert other[2][-1] == 48 and not np.array_equal(other[0], val)


@pytest.mark.parametrize("variant", ["cifar100", "cifar10"])
def test_cifar_archive_to_png_lists(tmp_path, variant):
    archive = make_cifar_archive(tmp_path / f"{variant}.tar.gz", variant)
    data = read_archive(archive, variant)
    assert data["train"][0].shape == (240, 32, 32, 3) and len(data["class_names"]) == 6
    counts = prepare(archive, CifarLTSpec(variant=variant, imbalance=10, val_per_class=4),
                     tmp_path / "out", log=lambda _: None)
    train = read_list(tmp_path / "out/train.txt")
    assert train.class_counts().tolist() == [36, 22, 14, 9, 5, 3]
    assert counts == {"train": 89, "val": 24, "test": 30}
    test = read_list(tmp_path / "out/test.txt")
    assert test.class_counts().tolist() == [5] * 6
    # The PNG holds the archive's pixels exactly (channel-major rows -> HWC).
    index = int(train.paths[0].rsplit("/", 1)[1].removesuffix(".png"))
    with Image.open(tmp_path / "out" / train.paths[0]) as image:
        assert np.array_equal(np.asarray(image), data["train"][0][index])


def test_cifar_archive_errors_name_the_file(tmp_path):
    archive = make_cifar_archive(tmp_path / "c100.tar.gz", "cifar100")
    with pytest.raises(CifarArchiveError, match="c100.tar.gz: no member 'cifar-10-python/data_batch_1'"):
        read_archive(archive, "cifar10")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(CifarArchiveError, match="junk.tar.gz: cannot read"):
        read_archive(junk, "cifar100")


def test_input_workers_default_to_the_jobs_threads():
    assert InputSpec.from_config({"size": 32}, default_workers=6).workers == 6
    assert InputSpec.from_config({"workers": 2}, default_workers=6).workers == 2
    assert InputSpec.from_config({"workers": 0}, default_workers=6).workers == 0


RESNET10 = {"name": "resnet10", "embed_dim": 16}


@pytest.mark.parametrize("style", ["torchvision", "caffe"])
def test_pretrained_trunk_loads_both_formats(tmp_path, style):
    state = resnet10_state_dict()
    saved = state if style == "torchvision" else caffe_style(state)
    torch.save(saved, tmp_path / "w.pth")
    model = build_model(RESNET10, 5)
    summary = load_trunk_weights(model.trunk, tmp_path / "w.pth", style)
    assert summary["tensors"] == len(model.trunk.state_dict())
    trunk = model.trunk.state_dict()
    assert torch.equal(trunk["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(trunk["stem.1.running_var"], state["bn1.running_var"])
    assert torch.equal(trunk["layer4.0.downsample.1.weight"], state["layer4.0.downsample.1.weight"])
    # The trunk computes what torchvision's ResNet computes up to its pooling.
    from torchvision.models.resnet import BasicBlock, ResNet
    reference = ResNet(BasicBlock, [1, 1, 1, 1])
    reference.load_state_dict(state)
    reference.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = reference.avgpool(reference.layer4(reference.layer3(reference.layer2(reference.layer1(
        reference.maxpool(reference.relu(reference.bn1(reference.conv1(x)))))))))
    assert torch.allclose(model.pool(model.trunk(x)), expected, atol=1e-5)


def test_pretrained_mismatch_and_missing_files_are_clear(tmp_path):
    model = build_model(RESNET10, 5)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        load_trunk_weights(model.trunk, tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(PretrainedWeightsError, match="cannot be read"):
        load_trunk_weights(model.trunk, tmp_path / "junk.pth")
    from torchvision.models.resnet import BasicBlock, ResNet
    torch.save(ResNet(BasicBlock, [2, 2, 2, 2]).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"unexpected: layer1\.1\."):
        load_trunk_weights(model.trunk, tmp_path / "r18.pth")
    state = resnet10_state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del state["layer2.0.bn1.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 missing: layer2\.0\.bn1\.bias.*wrong shape: "
                                                     r"layer1\.0\.conv1\.weight"):
        load_trunk_weights(model.trunk, tmp_path / "bad.pth")


def test_resnet152_keys_map_onto_the_trunk():
    """torchvision's ResNet-152 names (as the Caffe conversion uses them) cover our trunk exactly."""
    with torch.device("meta"):
        source = resnet152().state_dict()
        trunk = build_model({"name": "resnet152", "embed_dim": 512}, 365).trunk.state_dict()
    mapped = map_resnet_keys(caffe_style(source))
    mapped.update({k: v for k, v in trunk.items() if k.endswith("num_batches_tracked")})
    assert set(mapped) == set(trunk)
    assert all(mapped[k].shape == trunk[k].shape for k in trunk)


class _RunsCode:
    def __reduce__(self):
        return (print, ("a tampered archive ran code",))


def test_cifar_archive_with_code_in_its_pickle_is_refused(tmp_path):
    import io
    import pickle
    import tarfile

    payload = pickle.dumps({b"data": _RunsCode(), b"fine_labels": [0]}, protocol=2)
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(CifarArchiveError, match=r"refusing to unpickle (__builtin__|builtins)\.print"):
        read_archive(tmp_path / "evil.tar.gz", "cifar100")
