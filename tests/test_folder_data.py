import shutil

import pytest
import torch

from clipood_kit.data import DatasetError, FolderDataset, WorldDataset, export_world


def test_export_then_read_round_trip_gives_the_same_images_and_labels(world_tree):
    data = FolderDataset(world_tree)
    ref = WorldDataset(per_cell=3, seed=5)
    assert data.classes == sorted(ref.classes) and data.domains == sorted(ref.domains)
    assert len(data) == len(ref)
    # the folder order is (domain, class, file); map each folder sample back to the world grid
    for i in range(0, len(data), 7):
        img, y, d = data[i]
        dom_name, cls_name = data.domains[d], data.classes[y]
        n = int(data.paths[i].stem)
        j = ((ref.domains.index(dom_name) * len(ref.classes) + ref.classes.index(cls_name)) * 3) + n
        assert ref.classes[int(ref.labels[j])] == cls_name and ref.domains[int(ref.domain_ids[j])] == dom_name
        assert torch.equal(img, ref.images[j])


def test_export_refuses_a_non_empty_folder(world_tree):
    with pytest.raises(DatasetError, match="not empty"):
        export_world(world_tree, per_cell=1)


def _copy(tree, tmp_path):
    dst = tmp_path / "tree"
    shutil.copytree(tree, dst)
    return dst


def test_missing_root_and_missing_domain(world_tree, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"domain\(s\) \['clay'\] missing"):
        FolderDataset(world_tree, domains=["photo", "clay"])


def test_empty_domain_is_named(world_tree, tmp_path):
    root = _copy(world_tree, tmp_path)
    (root / "zzz").mkdir()
    with pytest.raises(DatasetError, match="domain 'zzz' .* is empty"):
        FolderDataset(root)


def test_class_sets_that_differ_name_the_classes(world_tree, tmp_path):
    root = _copy(world_tree, tmp_path)
    shutil.rmtree(root / "sketch" / "star")
    (root / "sketch" / "unicorn").mkdir()
    shutil.copy(root / "photo" / "star" / "00000.png", root / "sketch" / "unicorn" / "0.png")
    with pytest.raises(DatasetError, match=r"only in 'cartoon': \['star'\]; only in 'sketch': \['unicorn'\]"):
        FolderDataset(root)


def test_unreadable_image_names_the_file(world_tree, tmp_path):
    root = _copy(world_tree, tmp_path)
    bad = root / "neon" / "heart" / "00001.png"
    bad.write_bytes(b"this is not a png")
    data = FolderDataset(root)
    i = data.paths.index(bad)
    with pytest.raises(DatasetError, match="cannot read image .*neon/heart/00001.png"):
        data[i]


def test_the_image_check_decodes_pixels_and_lists_every_broken_file(world_tree, tmp_path):
    """A JPEG cut in its pixel data has a good header (PIL's verify() passes it); the check decodes the pixels
    and lists every broken file, also in zeroshot, before any model loads."""
    import io
    from PIL import Image
    from clipood_kit.evaluation.zeroshot import ZeroShotConfig, run_zeroshot
    root = _copy(world_tree, tmp_path)
    photo = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=95)
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    broken = [root / "neon" / "heart" / "cut.jpg", root / "sketch" / "ring" / "cut.jpg"]
    for path in broken:
        path.write_bytes(cut)
    with Image.open(broken[0]) as img:
        img.verify()                                   # the header check alone would pass it
    data = FolderDataset(root)
    with pytest.raises(DatasetError, match="2 unreadable image") as err:
        data.verify(range(len(data)))
    assert all(str(p) in str(err.value) for p in broken)
    with pytest.raises(DatasetError, match="2 unreadable image"):
        run_zeroshot(ZeroShotConfig(data=str(root), pretrained="/no/such/weights.safetensors"), progress=False)
