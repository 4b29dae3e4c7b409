"""What a learned CoOp context holds, read as CoOp's paper reads it (Zhou et al. 2022, Sec. 4.4): the words nearest
to each context vector in the token-embedding space, before and after training, and how far training moved the
context and each class's text feature."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from clipood_kit.engine.experiment import Setup
from clipood_kit.methods import Method, compose
from clipood_kit.methods.coop import context_word_cosines, nearest_words, vocabulary_of

State = Dict[str, torch.Tensor]


def context_key(kind: str = "coop") -> str:
    """The model-state entry of a prompt part's context vectors (`methods.coop.PromptContext.ctx`)."""
    return f"parts.{kind}.ctx"


def learned_context(setup: Setup, state: State, nearest: int = 3, max_words: int = 5000, near: int = 50) -> dict:
    """CoOp's context in `state` (a model state of `compose('coop')` trained on `setup`) against its start:

    - `nearest_before`, `nearest_after`: each context vector's `nearest` words by cosine (`methods.coop.nearest_words`);
    - `ctx_moved`: 1 - cos(v_start, v_end) per context vector;
    - `class_moved`: per class, 1 - cos of its text feature under the start and the learned context;
    - `vocabulary`, `embeddings`: the words a reader compares the context with: the whole vocabulary when it has at
      most `max_words` words (the tiny CLIP's), else the words among the `near` nearest to some context vector,
      before or after (open_clip's BPE vocabulary has 49,405);
    - `ctx`, `ctx_init`, `init` (the words the context starts from), `base`, `new` (class names)."""
    method = Method(compose("coop"))
    key = context_key(method.cfg.loss.kind)
    if key not in state:
        raise ValueError(f"the state holds no CoOp context ({key}); its entries start {sorted(state)[:3]}")
    start, end = setup.prepare_method(method).trained_state()[key], state[key]
    ids, words = vocabulary_of(setup.zero_shot.loaded.tokenizer)
    with torch.no_grad():
        embeddings = setup.zero_shot.loaded.model.token_embedding.weight[ids].float().cpu()
    features = lambda s: F.normalize(setup.scratch_for(s).class_features().detach().float(), dim=-1)  # noqa: E731
    before, after = features({**state, key: start}), features(state)
    moved = (1 - (before * after).sum(-1)).tolist()
    if len(words) > max_words:
        kept_ids = context_word_cosines(torch.cat([start, end]), embeddings).topk(near, dim=1).indices.unique()
        kept_words, kept = [words[int(i)] for i in kept_ids], embeddings[kept_ids]
    else:
        kept_words, kept = words, embeddings
    names = setup.dataset.classes
    return {"init": method.cfg.loss.ctx_init, "vocabulary": kept_words, "embeddings": kept.tolist(),
            "nearest_before": nearest_words(start, embeddings, words, nearest),
            "nearest_after": nearest_words(end, embeddings, words, nearest),
            "ctx_moved": (1 - F.cosine_similarity(start.double(), end.double(), dim=-1)).tolist(),
            "class_moved": {names[i]: moved[i] for i in range(len(names))},
            "base": [names[i] for i in setup.split.base_ids], "new": [names[i] for i in setup.split.new_ids],
            "ctx": end.tolist(), "ctx_init": start.tolist()}


__all__ = ["learned_context", "context_key"]
