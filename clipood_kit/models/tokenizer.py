"""A word-level tokenizer for the embedded tiny CLIP (its vocabulary is the world's words).

Ids: 0 = padding, 1 = start of text, 2..V+1 = the words in vocabulary order, V+2 = end of text. The end
token has the largest id, so open_clip's text tower (pool_type 'argmax') pools at the end token, exactly as
with the BPE tokenizer of the real models.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Sequence, Union

import torch

_PUNCTUATION = re.compile(r"[.,;:!?\"'()]")


class TokenizerError(ValueError):
    """A text the word tokenizer cannot encode; the message names the word and the fix."""


class WordTokenizer:
    pad_id = 0
    sot_id = 1

    def __init__(self, vocabulary: Sequence[str], context_length: int):
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has duplicate words")
        self.vocabulary = list(vocabulary)
        self.context_length = context_length
        self.word_to_id = {w: i + 2 for i, w in enumerate(self.vocabulary)}
        self.eot_id = len(self.vocabulary) + 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + 3

    @classmethod
    def from_file(cls, path: Union[str, Path], context_length: int) -> "WordTokenizer":
        return cls(json.loads(Path(path).read_text()), context_length)

    def words(self, text: str) -> List[str]:
        return _PUNCTUATION.sub(" ", text.lower()).split()

    def encode(self, text: str) -> List[int]:
        words = self.words(text)
        unknown = [w for w in words if w not in self.word_to_id]
        if unknown:
            raise TokenizerError(
                f"word(s) {unknown} in {text!r} are not in the tiny CLIP's vocabulary of {len(self.vocabulary)} "
                f"world words; use prompts made of world words, or load an open_clip model for other class names")
        ids = [self.sot_id] + [self.word_to_id[w] for w in words] + [self.eot_id]
        if len(ids) > self.context_length:
            raise TokenizerError(f"{text!r} needs {len(ids)} tokens but the context length is {self.context_length}; "
                                 f"shorten the prompt")
        return ids

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, :len(ids)] = torch.tensor(ids)
        return out
