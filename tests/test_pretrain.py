import json

import torch
from safetensors.torch import load_file

from clipood_kit.pretrain import PretrainConfig, captions, pretrain
from clipood_kit.data import world


def test_pretraining_is_seeded_and_writes_weights_and_card(tmp_path):
    cfg = PretrainConfig(steps=3, batch_size=16, eval_per_cell=1, warmup_steps=1)
    pretrain(cfg, out=tmp_path / "a.safetensors", progress=False)
    pretrain(cfg, out=tmp_path / "b.safetensors", progress=False)
    wa, wb = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    card = json.loads((tmp_path / "a.card.json").read_text())
    assert card["config"]["steps"] == 3 and set(card["zeroshot_eval"]["accuracy"]) >= {"photo", "mean"}
    assert (tmp_path / "a.md").read_text().startswith("# Model card")
    # the weights moved away from the seeded initialisation
    torch.manual_seed(0)
    from clipood_kit.models import load_clip
    init = load_clip(pretrained=None).model.state_dict()
    assert not torch.equal(init["visual.conv1.weight"], wa["visual.conv1.weight"])


def test_captions_always_name_the_class():
    b = world.sample(100, seed=0)
    caps = captions(b, torch.Generator().manual_seed(0))
    assert all(c.split()[-1] == b.config.classes[b.labels[i]] for i, c in enumerate(caps))
    assert len(set(len(c.split()) for c in caps)) > 2
