"""The real-data readers (`data/coop_layout.py`, `data/domainbed_layout.py`, `data/mcm_layout.py`, `data/layouts.py`)
on small trees in the official layouts (`layout_trees.py`), against transcriptions of the official selection
rules (`official_rules.py`): the same images in each list, the same labels and names, the same base / new
halves, the same few-shot picks, the same hold-out split."""
import json
from pathlib import Path

import pytest
import torch

import layout_trees as trees
import official_rules as official
from clipood_kit.data import open_dataset
from clipood_kit.data.coop_layout import BASE_TO_NEW, LAYOUTS, CoOpDataset
from clipood_kit.data.datasets import DatasetError
from clipood_kit.data.domainbed_layout import DomainBedDataset
from clipood_kit.data.layouts import check, detect, format_check, parse_data

# thuml/CLIPood converter_dassl.py CUSTOM_TEMPLATES, lines 25-41, by Dassl dataset name
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.", "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.", "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.", "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.", "SUN397": "a photo of a {}.", "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.", "ImageNet": "a photo of a {}.", "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.", "ImageNetA": "a photo of a {}.", "ImageNetR": "a photo of a {}."}
SPLIT_KINDS = [k for k in BASE_TO_NEW if LAYOUTS[k].reader == "split-json"]
REAL = dict(model="ViT-B-32", pretrained=None, device="cpu", cache_dir="off")     # a BPE tokenizer for real names


def _paths(dataset, indices):
    return [str(dataset.paths[i]) for i in torch.as_tensor(indices).tolist()]


def test_every_layout_has_its_official_template_and_the_presets_use_them():
    from clipood_kit.engine.presets import get_preset
    assert {layout.name: layout.template for layout in LAYOUTS.values()} == CUSTOM_TEMPLATES
    for kind in BASE_TO_NEW:
        exp = get_preset(f"clipood-base-to-new-{kind}")
        assert exp.templates == [CUSTOM_TEMPLATES[LAYOUTS[kind].name]] and exp.data == f"{kind}:"
    assert get_preset("clipood-domain-shift-pacs").templates == ["a photo of a {}."]


@pytest.mark.parametrize("kind", SPLIT_KINDS)
def test_split_file_datasets_read_the_official_lists(tmp_path, kind):
    folder, split = trees.split_tree(tmp_path, kind)
    data = CoOpDataset(tmp_path, kind)
    layout = LAYOUTS[kind]
    image_dir = str(folder / layout.image_dir) if layout.image_dir else str(folder)
    train, val, test = official.dassl_read_split(split, image_dir)
    for part, items in (("train", train), ("val", val), ("test", test)):
        assert _paths(data, data.partition[part]) == [i.impath for i in items]
        assert data.labels[data.partition[part]].tolist() == [i.label for i in items]
    assert data.raw_classes == ["golden_retriever", "tabby_cat", "sea_lion", "red_fox", "tree_frog"]
    assert data.classes[0] == "golden retriever" and data.template == CUSTOM_TEMPLATES[layout.name]
    assert data.domains == [kind]
    # the same data through --data KIND:ROOT, through $DATA/<folder>, and through the folder itself (detected)
    assert _paths(open_dataset(f"{kind}:{tmp_path}"), range(len(data))) == _paths(data, range(len(data)))
    assert _paths(open_dataset(str(folder)), range(len(data))) == _paths(data, range(len(data)))


@pytest.mark.parametrize("shots,seed", [(1, 0), (2, 1), (4, 2), (16, 0)])
def test_few_shot_picks_and_base_new_halves_follow_dassl(tmp_path, shots, seed):
    folder, split = trees.split_tree(tmp_path, "dtd")
    data = CoOpDataset(tmp_path, "dtd")
    train, val, test = official.dassl_read_split(split, str(folder / "images"))
    want_train, want_val = official.dassl_fewshot(seed, train, val, shots)
    got_train, got_val = data.fewshot(shots, seed)
    assert _paths(data, got_train) == [i.impath for i in want_train]
    assert _paths(data, got_val) == [i.impath for i in want_val]
    base, new = data.base_new_split()
    (base_train,), (new_test,) = official.coop_subsample("base", want_train), official.coop_subsample("new", test)
    assert [data.classes[y] for y in base] == ["golden retriever", "tabby cat", "sea lion"] and new == [3, 4]
    # through the engine: base-to-new trains on the base classes of the few-shot list and tests on the test list
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    setup = prepare(ExperimentConfig(data=f"dtd:{tmp_path}", protocol="base-to-new", shots=shots, split_seed=seed,
                                     **REAL))
    assert sorted(_paths(data, setup.split.train_idx)) == sorted(i.impath for i in base_train)
    assert _paths(data, setup.split.eval_idx) == [i.impath for i in test]
    assert sorted(_paths(data, [i for i in setup.split.eval_idx.tolist() if int(data.labels[i]) in new])) == \
        sorted(i.impath for i in new_test)
    assert setup.zero_shot.templates == ["{} texture."]


def test_a_few_shot_file_is_read_and_a_foreign_one_refused(tmp_path):
    folder, split = trees.split_tree(tmp_path, "eurosat")
    data = CoOpDataset(tmp_path, "eurosat")
    # CoOp's file, written on another machine (absolute paths elsewhere): its picks, not Dassl's draw
    picks = {"train": [(f"/home/someone/data/eurosat/2750/{p}", y, c) for p, y, c in split["train"][-3:]],
             "val": [(f"/home/someone/data/eurosat/2750/{p}", y, c) for p, y, c in split["val"][:2]]}
    trees.fewshot_pickle(data.fewshot_file(16, 0), picks)
    train, val = data.fewshot(16, 0)
    assert _paths(data, train) == [str(folder / "2750" / p) for p, _, _ in split["train"][-3:]]
    assert _paths(data, val) == [str(folder / "2750" / p) for p, _, _ in split["val"][:2]]
    # an image the lists do not hold: the file belongs to another split
    trees.fewshot_pickle(data.fewshot_file(16, 1), {"train": [("/x/eurosat/2750/nowhere.jpg", 0, "a")], "val": []})
    with pytest.raises(DatasetError, match="nowhere.jpg.*belongs to another split"):
        data.fewshot(16, 1)
    # anything but Dassl's Datum in the pickle is refused, never executed
    import pickle
    data.fewshot_file(16, 2).write_bytes(pickle.dumps({"train": [Path("/etc/passwd")]}))
    with pytest.raises(DatasetError, match="not allowed in a few-shot file"):
        data.fewshot(16, 2)


def test_fgvc_aircraft_reads_its_variant_files(tmp_path):
    folder = trees.fgvc_tree(tmp_path)
    data = CoOpDataset(tmp_path, "fgvcaircraft")
    assert data.raw_classes == ["707-320", "727-200", "A300B4", "BAE 146-200"]      # variants.txt order
    lines = (folder / "images_variant_test.txt").read_text().splitlines()
    assert _paths(data, data.partition["test"]) == [str(folder / "images" / (line.split(" ")[0] + ".jpg"))
                                                    for line in lines]
    assert data.labels[data.partition["test"]].tolist() == [data.raw_classes.index(" ".join(line.split(" ")[1:]))
                                                            for line in lines]
    (folder / "images_variant_val.txt").write_text("1000099 Concorde\n")
    with pytest.raises(DatasetError, match="Concorde"):
        CoOpDataset(tmp_path, "fgvcaircraft")


def test_imagenet_reads_sorted_synsets_names_them_and_tests_on_val(tmp_path):
    folder = trees.imagenet_tree(tmp_path)
    data = CoOpDataset(tmp_path, "imagenet")
    assert data.classes == trees.NAMES and data.domains == ["imagenet"]
    assert torch.equal(data.partition["val"], data.partition["test"])
    assert [Path(p).parts[-3] for p in _paths(data, data.partition["test"])] == ["val"] * 12
    labels = data.labels[data.partition["train"]].tolist()
    assert [trees.WNIDS[y] for y in labels] == [Path(p).parent.name for p in _paths(data, data.partition["train"])]
    # few-shot: train only (imagenet.py lines 41-56), Dassl's draw on the listing's order
    train = [official.Datum(str(data.paths[i]), int(data.labels[i]), "") for i in data.partition["train"].tolist()]
    want, _ = official.dassl_fewshot(3, train, [], 2, with_val=False)
    assert _paths(data, data.fewshot(2, 3)[0]) == [i.impath for i in want]
    # without classnames.txt the 6 folders cannot be named (open_clip's names need ImageNet's 1,000)
    (folder / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt.*DATASETS.md"):
        CoOpDataset(tmp_path, "imagenet")


def test_imagenet_without_classnames_takes_open_clip_names_by_sorted_synset():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from clipood_kit.data.coop_layout import imagenet_names
    wnids = [f"n{i:08d}" for i in range(1000)][::-1]
    names = imagenet_names(Path("/nonexistent"), wnids, LAYOUTS["imagenet"])
    assert names["n00000000"] == IMAGENET_CLASSNAMES[0] and names["n00000999"] == IMAGENET_CLASSNAMES[999]


@pytest.mark.parametrize("kind", ["imagenet-a", "imagenet-r", "imagenet-sketch"])
def test_imagenet_variants_label_their_synset_folders_in_sorted_order(tmp_path, kind):
    trees.variant_tree(tmp_path, kind)
    data = CoOpDataset(tmp_path, kind)
    assert data.classes == trees.NAMES[1:4]                # the subset, named through ImageNet's file
    assert sorted(set(data.labels.tolist())) == [0, 1, 2] and len(data.partition["train"]) == 0
    with pytest.raises(DatasetError, match="test-only"):
        data.fewshot(1, 0)


def test_imagenet_v2_reads_label_folders(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    trees.imagenetv2_tree(tmp_path)
    data = CoOpDataset(tmp_path, "imagenetv2")
    assert sorted(set(data.labels.tolist())) == [0, 3]
    assert data.classes == list(IMAGENET_CLASSNAMES)                 # every class, also those without images


def test_domainbed_reads_as_imagefolder_and_holds_out_with_domainbeds_split(tmp_path):
    from torchvision.datasets import ImageFolder
    root = trees.domainbed_tree(tmp_path)
    data = DomainBedDataset(tmp_path, "pacs")
    assert data.domains == ["art_painting", "cartoon", "photo", "sketch"]
    offset = 0
    split = data.holdout(0)
    for env_i, env in enumerate(data.domains):
        reference = ImageFolder(str(root / env))                       # torchvision itself
        mine = (data.domain_ids == env_i).nonzero().flatten().tolist()
        assert [str(data.paths[i]) for i in mine] == [p for p, _ in reference.samples]
        assert data.labels[mine].tolist() == [y for _, y in reference.samples]
        out_keys, in_keys = official.domainbed_split(len(reference), 0.2, env_i)
        assert split["out"][env_i].tolist() == [mine[k] for k in out_keys]
        assert split["in"][env_i].tolist() == [mine[k] for k in in_keys]
        offset += len(mine)
    # CLIPood's domain-shift lists with the sketch domain as target
    lists = data.clipood_lists([3])
    assert sorted(lists["train"].tolist()) == sorted(sum((split["in"][d].tolist() for d in range(3)), []))
    assert lists["test"].tolist() == split["out"][3].tolist()
    # through the engine: the same lists; names with '_' read as spaces
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    setup = prepare(ExperimentConfig(data=f"pacs:{tmp_path}", protocol="domain-shift", source_domains=data.domains[:3],
                                     **REAL))
    assert sorted(setup.split.train_idx.tolist()) == sorted(lists["train"].tolist())
    assert setup.split.eval_idx.tolist() == sorted(lists["val"].tolist() + lists["test"].tolist())
    assert setup.zero_shot.templates == ["a photo of a {}."]


def test_domainbed_open_classes_follow_clipood_in_the_wild(tmp_path):
    trees.domainbed_tree(tmp_path, classes=("Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike"), folder="office_home",
                         envs=("Art", "Clipart", "Product", "Real World"))
    data = DomainBedDataset(tmp_path, "officehome")
    assert data.classes[0] == "Alarm Clock" and data.raw_classes[0] == "Alarm_Clock"
    assert data.base_new_split() == ([0, 1], [2, 3, 4])                      # int((1 - 0.5) * 5) = 2 base
    lists = data.clipood_lists([1], open_ratio=0.5)
    env = (data.domain_ids == 1).nonzero().flatten()
    base = env[data.labels[env] < 2]
    out_keys = official.domainbed_split(len(base), 0.2, 1)[0]
    import numpy as np
    keys = list(range(len(base)))
    np.random.RandomState(official.seed_hash(0, 1, "base")).shuffle(keys)
    n = int(len(base) * 0.2)
    assert lists["test"].tolist() == base[keys[n:]].tolist() + base[keys[:n]].tolist()
    assert out_keys is not None and set(lists["open"].tolist()) == set(env[data.labels[env] >= 2].tolist())


def test_mcm_ood_presets_name_their_folders(tmp_path):
    from clipood_kit.data.mcm_layout import ood_folders
    for sub in ("iNaturalist", "SUN", "Places", "dtd/images"):
        trees.jpeg(tmp_path / sub / "x" / "a.jpg", 1)
    assert [(k, n) for k, n, _ in ood_folders("mcm", tmp_path)] == [("far", "iNaturalist"), ("far", "SUN"),
                                                                    ("far", "Places"), ("far", "Textures")]
    with pytest.raises(DatasetError, match="ImageNet20/val"):
        ood_folders("imagenet20", tmp_path)


def test_imagenet10_reads_with_mcms_names(tmp_path):
    from clipood_kit.data.mcm_layout import IMAGENET10, ImageNetSubset
    for part in ("train", "val"):
        for i, w in enumerate(sorted(IMAGENET10)[:3]):
            trees.jpeg(tmp_path / "ImageNet10" / part / w / "0.jpg", 3000 + i)
    data = open_dataset(f"imagenet10:{tmp_path}")
    assert isinstance(data, ImageNetSubset)
    assert data.classes == ["brambling bird", "bull frog", "swiss mountain dog"]    # sorted by WordNet id


def test_detection_parsing_and_the_preset_that_names_its_dataset(tmp_path):
    trees.split_tree(tmp_path, "oxfordpets")
    assert detect(tmp_path)[0] == "oxfordpets" and detect(tmp_path / "oxford_pets")[0] == "oxfordpets"
    assert parse_data("eurosat:/data") == ("eurosat", "/data") and parse_data("/data/x") == (None, "/data/x")
    assert parse_data("C:/data") == (None, "C:/data")
    from clipood_kit.engine.builder import build_experiment
    assert build_experiment("clipood-base-to-new-oxfordpets", data=str(tmp_path)).data == f"oxfordpets:{tmp_path}"
    with pytest.raises(DatasetError, match="names the dataset but not its folder"):
        open_dataset("oxfordpets:")


def test_data_check_names_every_problem_at_once(tmp_path):
    folder, split = trees.split_tree(tmp_path, "eurosat")
    from clipood_kit.engine.presets import PRESETS
    good = check(f"eurosat:{tmp_path}", presets=list(PRESETS))
    assert good["problems"] == [] and good["splits"] == {"train": 30, "val": 10, "test": 20}
    assert good["presets"] == {"clipood-base-to-new-eurosat": "ready"}
    text = format_check(good)
    assert "a centered satellite photo of {}." in text and "problems  none" in text
    # two missing images and one broken one: all three named, nothing raised
    (folder / "2750" / split["test"][0][0]).unlink()
    (folder / "2750" / split["test"][1][0]).unlink()
    (folder / "2750" / split["train"][0][0]).write_bytes(b"not a jpeg")
    bad = check(f"eurosat:{tmp_path}")
    assert len(bad["problems"]) == 2
    assert "2 listed image(s) missing" in bad["problems"][0] and "1 unreadable image(s)" in bad["problems"][1]
    # a tree without its split file: the file and the document named
    (folder / "split_zhou_EuroSAT.json").unlink()
    report = check(f"eurosat:{tmp_path}")
    assert any("split_zhou_EuroSAT.json" in p and "DATASETS.md" in p for p in report["problems"])
    json.dumps(report)                                                  # a JSON-ready report


def test_data_check_command_and_the_mcm_ood_preset(tmp_path, capsys):
    from clipood_kit.cli import main
    from clipood_kit.data.far_ood import expand_ood_data
    trees.split_tree(tmp_path, "oxfordpets")
    assert main(["data", "check", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "layout    oxfordpets (found" in out and "a photo of a {}, a type of pet." in out
    assert json.loads((tmp_path / "r.json").read_text())["classes"] == 5
    assert main(["data", "check", f"pacs:{tmp_path}"]) == 1                         # no PACS/ there: a problem
    assert "no folder" in capsys.readouterr().out
    for sub in ("iNaturalist", "SUN", "Places", "dtd/images"):
        trees.jpeg(tmp_path / "ood" / sub / "x" / "a.jpg", 7)
    sets = expand_ood_data([f"mcm:{tmp_path / 'ood'}", f"near:mine={tmp_path / 'ood' / 'SUN'}"])
    assert [(k, n) for k, n, _ in sets] == [("far", "iNaturalist"), ("far", "SUN"), ("far", "Places"),
                                            ("far", "Textures"), ("near", "mine")]


def test_imagenet_variants_are_scored_with_imagenets_classifier_among_their_classes(tmp_path):
    """--eval-data: ImageNet-V2 and -R join an ImageNet run as unseen domains, labels mapped by WordNet id (V2 by
    ImageNet's label numbers); -R's images are classified among its own classes only."""
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.engine.scoring import score
    trees.imagenet_tree(tmp_path)
    trees.imagenetv2_tree(tmp_path, labels=(0, 3))
    trees.variant_tree(tmp_path, "imagenet-r", wnids=trees.WNIDS[2:5])
    (tmp_path / "imagenetv2" / "classnames.txt").write_text("")          # not ImageNet's 1,000: refused
    cfg = dict(data=f"imagenet:{tmp_path}", protocol="domain-shift", **REAL)
    with pytest.raises(DatasetError, match="not ImageNet's 1,000"):
        prepare(ExperimentConfig(eval_data=[f"imagenetv2:{tmp_path}"], **cfg))
    (tmp_path / "imagenetv2" / "classnames.txt").unlink()              # V2 takes open_clip's names then
    names = (tmp_path / "imagenet" / "classnames.txt").read_text()
    (tmp_path / "imagenet" / "classnames.txt").write_text(names.replace("tiger shark", "tiger"))
    with pytest.raises(DatasetError, match="do not name ImageNet's classes"):
        prepare(ExperimentConfig(eval_data=[f"imagenetv2:{tmp_path}"], **cfg))
    (tmp_path / "imagenet" / "classnames.txt").write_text(names)
    with pytest.raises(ValueError, match="pass --data imagenet:ROOT"):
        prepare(ExperimentConfig(eval_data=[f"imagenet-r:{tmp_path}"], **dict(cfg, data=f"imagenet-r:{tmp_path}")))
    setup = prepare(ExperimentConfig(eval_data=[f"imagenet-r:{tmp_path}"], **cfg))
    data = setup.dataset
    assert data.domains == ["imagenet", "imagenet-r"] and setup.split.source_ids == [0] and setup.split.target_ids == [1]
    r = (data.domain_ids == 1).nonzero().flatten()
    assert [trees.WNIDS[y] for y in data.labels[r].tolist()] == [Path(data.paths[i]).parent.name for i in r.tolist()]
    assert data.domain_classes == {1: [2, 3, 4]} and set(r.tolist()) <= set(setup.split.eval_idx.tolist())
    # cosines whose best class over all six is outside -R's three, and whose best among -R's is the label
    idx = setup.split.eval_idx
    labels, domains = data.labels[idx], data.domain_ids[idx]
    cosines = torch.zeros(len(idx), 6)
    cosines[torch.arange(len(idx)), labels] = 0.5
    cosines[domains == 1, 0] = 0.9                                         # tench: not an ImageNet-R class here
    scores = score(setup, cosines, labels, domains)
    assert scores["by_domain"]["imagenet-r"]["all"] == 100.0 and scores["by_domain"]["imagenet"]["all"] == 100.0


def test_imagenet_v2_joins_with_imagenets_label_numbers(tmp_path, monkeypatch):
    from clipood_kit.data.coop_layout import CoOpDataset, WithVariants
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    trees.imagenet_tree(tmp_path)
    (tmp_path / "imagenet" / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(trees.WNIDS, IMAGENET_CLASSNAMES)))
    trees.imagenetv2_tree(tmp_path, labels=(0, 3))
    both = WithVariants(CoOpDataset(tmp_path, "imagenet"), [CoOpDataset(tmp_path, "imagenetv2")])
    v2 = (both.domain_ids == 1).nonzero().flatten()
    assert both.labels[v2].tolist() == [0, 0, 3, 3] and both.domain_classes == {1: list(range(6))}
    assert both.official_split([0], [1], "domain-shift", None, 0)[1].tolist()[-4:] == v2.tolist()


# DomainBed's five, as its download script leaves them (domainbed/scripts/download.py; datasets.py lines 227-260)
DOMAINBED_TREES = {
    "pacs": ("PACS", ("art_painting", "cartoon", "photo", "sketch"), ("dog", "elephant", "giraffe")),
    "vlcs": ("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), ("bird", "car", "chair")),
    "officehome": ("office_home", ("Art", "Clipart", "Product", "Real World"), ("Alarm_Clock", "Backpack", "Bed")),
    "terraincognita": ("terra_incognita", ("location_100", "location_38", "location_43", "location_46"),
                       ("bird", "bobcat", "cat")),
    "domainnet": ("domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
                  ("aircraft_carrier", "airplane", "alarm_clock")),
}


@pytest.mark.parametrize("kind", sorted(DOMAINBED_TREES))
def test_each_domainbed_dataset_reads_from_its_folder_with_domainbeds_split(tmp_path, kind):
    from torchvision.datasets import ImageFolder
    folder, envs, classes = DOMAINBED_TREES[kind]
    root = trees.domainbed_tree(tmp_path, folder=folder, envs=envs, classes=classes, per_class=3)
    data = open_dataset(f"{kind}:{tmp_path}")
    assert isinstance(data, DomainBedDataset) and data.domains == sorted(envs)
    assert data.classes == [c.replace("_", " ") for c in sorted(classes)]
    assert detect(root) == (kind, f"the folder is named {folder}/ (DomainBed's name)")
    split = data.holdout(0)
    for env_i, env in enumerate(data.domains):
        reference = ImageFolder(str(root / env))
        mine = (data.domain_ids == env_i).nonzero().flatten().tolist()
        assert [str(data.paths[i]) for i in mine] == [p for p, _ in reference.samples]
        out_keys, in_keys = official.domainbed_split(len(reference), 0.2, env_i)
        assert split["out"][env_i].tolist() == [mine[k] for k in out_keys]
