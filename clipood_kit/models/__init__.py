"""Models: one loader for open_clip architectures, local checkpoints and the embedded tiny CLIP."""
from clipood_kit.models.loader import (TINY_NAME, LoadedCLIP, PretrainedUnavailableError, load_clip, tiny_tokenizer,
                     tiny_weights_path)

__all__ = ["TINY_NAME", "LoadedCLIP", "PretrainedUnavailableError", "load_clip", "tiny_tokenizer",
           "tiny_weights_path"]
