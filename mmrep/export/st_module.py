"""sentence-transformers module for an exported mmrep encoder (copied as `sentence_mmrep.py` into HF exports).

Like `hf_modeling.py` this file must NOT import mmrep. `SentenceTransformer(DIR, trust_remote_code=True)`
reads `modules.json`, which names `sentence_mmrep.MmrepSentenceModule`; inputs may be a string (a query,
or a product title with `text_kind: product` in `mmrep_sentence_config.json`), a PIL image (or a normalised
(3, S, S) tensor), or {"text": ..., "image": ...} for both.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules import InputModule

from .modeling_mmrep import MmrepEncoderModel


class MmrepSentenceModule(InputModule):
    config_keys = ["text_kind"]
    config_file_name = "mmrep_sentence_config.json"
    save_in_root = True

    def __init__(self, model: MmrepEncoderModel, text_kind: str = "query"):
        super().__init__()
        self.model = model.eval()
        self.text_kind = text_kind

    @property
    def modalities(self) -> list:
        return ["text", "image", ("image", "text"), ("text", "image")]

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs: Any) -> "MmrepSentenceModule":
        config = cls.load_config(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                 revision=revision, local_files_only=local_files_only)
        model = MmrepEncoderModel.from_pretrained(model_name_or_path, token=token, cache_dir=cache_folder,
                                                  revision=revision, local_files_only=local_files_only)
        return cls(model, **config)

    def preprocess(self, inputs, prompt: str | None = None, **kwargs: Any) -> dict:
        texts, images = [], []
        for x in inputs:
            if isinstance(x, dict):
                text, image = x.get("text"), x.get("image")
            elif isinstance(x, str):
                text, image = x, None
            else:
                text, image = None, x
            texts.append((prompt or "") + text if isinstance(text, str) else text)
            images.append(image)
        return self.model.prepare(texts, images, self.text_kind)

    def forward(self, features: dict, **kwargs: Any) -> dict:
        keys = ("pixel_values", "image_mask", "input_ids", "token_types", "attention_mask")
        features["sentence_embedding"] = self.model(**{k: features[k] for k in keys}).embedding
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.mmrep["embed_dim"])

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_config(output_path)
