import pytest
import torch

from clipood_kit.core.io import save_weights
from clipood_kit.models import PretrainedUnavailableError, load_clip
from clipood_kit.models.tokenizer import TokenizerError


def _outputs(loaded):
    torch.manual_seed(0)
    size = loaded.model.visual.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        img = loaded.model.encode_image(loaded.preprocess(images))
        txt = loaded.model.encode_text(loaded.tokenizer(["a sketch of a star", "a red circle"]))
    return img, txt


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_round_trip_gives_identical_outputs(tmp_path, suffix):
    torch.manual_seed(123)
    random = load_clip(pretrained=None)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pt":
        torch.save(random.model.state_dict(), path)
    else:
        save_weights(path, random.model.state_dict())
    again = load_clip(pretrained=str(path))
    for a, b in zip(_outputs(random), _outputs(again)):
        assert torch.equal(a, b)
    assert again.model_id.startswith("tiny-clip-world/file:ckpt")
    shipped = load_clip()
    assert not torch.equal(_outputs(shipped)[0], _outputs(again)[0])


def test_open_clip_architecture_loads_through_the_same_loader():
    model, tokenizer, preprocess = load_clip("ViT-B-32", pretrained=None)
    assert type(model).__name__ == "CLIP" and model.visual.image_size == (224, 224)
    with torch.no_grad():
        x = preprocess(torch.randint(0, 256, (1, 3, 300, 260), dtype=torch.uint8))
        assert x.shape == (1, 3, 224, 224)
        f = model.encode_image(x)
        t = model.encode_text(tokenizer(["a photo of a giraffe."]))
    assert f.shape == (1, 512) and t.shape == (1, 512)


def test_pretrained_tag_offline_says_how_to_pass_a_file():
    with pytest.raises(PretrainedUnavailableError, match="pass its path instead"):
        load_clip("RN50", pretrained="openai")


def test_unknown_tag_and_unknown_architecture_are_named():
    with pytest.raises(PretrainedUnavailableError, match="neither a file nor a pretrained tag"):
        load_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown architecture 'ViT-Q-99'"):
        load_clip("ViT-Q-99")


def test_word_tokenizer_pools_at_the_end_token_and_names_unknown_words(tiny):
    tok = tiny.tokenizer
    ids = tok(["a photo of a star.", "a star"])
    assert ids.shape == (2, tok.context_length)
    assert ids[0].argmax() == 6 and ids[1].argmax() == 3 and ids.max() == tok.eot_id
    assert tok.vocab_size == tiny.model.vocab_size
    with pytest.raises(TokenizerError, match=r"\['giraffe'\]"):
        tok("a photo of a giraffe")


def test_weights_of_another_architecture_name_the_one_they_look_like():
    """The tiny CLIP's file loaded as RN50: the message names the architecture whose shapes the file has."""
    from clipood_kit.models.loader import architectures_like, tiny_weights_path
    assert architectures_like(tiny_weights_path()) == ["tiny-clip-world"]
    with pytest.raises(ValueError, match="the file looks like tiny-clip-world: pass --model tiny-clip-world"):
        load_clip("RN50", str(tiny_weights_path()))
