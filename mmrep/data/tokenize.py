"""Segment-aware tokenization: a product's text fields become one token sequence with a type per token.

Layout: [SOT] title | category path | attribute "key: value" ... | description [EOT], truncated to
`context_length` (EOT always kept). A *text view* picks which fields a product presents: "full" (all of
them: what export and evaluation encode), "title_category" or "title". Training samples views
(`TextViews`) so the text a product shows in training covers how it is queried (titles, short
phrases), not only its full catalogue record. Queries: [SOT] query text [EOT]. With the open_clip backend the
ids are exactly open_clip's (SOT 49406, EOT 49407), so an open_clip text tower can read them
directly (it pools at the argmax id, the EOT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from mmrep.batch import TokenType
from mmrep.data.transforms import WorkerRandom
from mmrep.errors import MmrepError
from mmrep.records import Product, Query


@dataclass
class TokenizerConfig:
    backend: str = "open_clip"  # "open_clip" (offline SimpleTokenizer) or "hf" (a local tokenizer dir)
    path: str = ""  # local HF tokenizer directory (or python:PACKAGE, see mmrep.pretrained) when backend == "hf"
    context_length: int = 77
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.backend not in ("open_clip", "hf"):
            raise MmrepError(f"tokenizer.backend must be 'open_clip' or 'hf', got {self.backend!r}")
        if self.backend == "hf" and not self.path:
            raise MmrepError("tokenizer.path must name a local Hugging Face tokenizer directory when backend is 'hf'")
        if self.context_length < 3:
            raise MmrepError("tokenizer.context_length must be at least 3")


TEXT_VIEWS = ("full", "title_category", "title")


class TextViews:
    """Draws a text view per product from `weights` ({view: probability}); per-worker seeded streams."""

    def __init__(self, weights: dict[str, float], seed: int | None = None):
        unknown = sorted(set(weights) - set(TEXT_VIEWS))
        if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise MmrepError(f"data.text_views {weights} must map views from {TEXT_VIEWS} to weights >= 0 with a "
                             "positive sum, e.g. {title: 0.5, title_category: 0.2, full: 0.3}")
        self.views = list(weights)
        self.weights = [float(weights[v]) for v in self.views]
        self._random = WorkerRandom(seed, "text-views")  # per DataLoader worker and pass, like image crops

    def sample(self) -> str:
        return self._random().choices(self.views, self.weights)[0]


class ProductTokenizer:
    """Tokenizes products and queries into (ids, types) with per-field token types."""

    def __init__(self, cfg: TokenizerConfig):
        self.cfg = cfg
        if cfg.backend == "open_clip":
            from open_clip.tokenizer import SimpleTokenizer

            tok = SimpleTokenizer()
            self._encode = tok.encode
            self.sot_id, self.eot_id = tok.sot_token_id, tok.eot_token_id
            self.vocab_size = len(tok.encoder)
        else:
            from transformers import AutoTokenizer

            from mmrep.pretrained import resolve_model_dir

            path = resolve_model_dir(cfg.path, "model.tokenizer.path")
            if not Path(path).is_dir():
                raise MmrepError(f"tokenizer.path {cfg.path!r} is not a directory; point it at a local HF tokenizer")
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            self._encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
            # BERT-style: [CLS] ... [SEP]; Llama-style: <s> ... </s>; Qwen2(-VL) ships no bos: text ... <|im_end|>
            self.sot_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            self.eot_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            if self.eot_id is None:
                raise MmrepError(f"tokenizer at {cfg.path} has no end token (sep or eos); set one in its "
                                 "tokenizer_config.json")
            self.vocab_size = len(tok)

    def _text(self, text: str) -> list[int]:
        text = text.strip()
        if not text:
            return []
        # short segments (category paths, "key: value" attributes) repeat across a catalogue and the
        # open_clip encoder costs ~0.2 ms a call, so they are memoised (bounded; titles mostly miss)
        cache = self.__dict__.setdefault("_short_cache", {})
        if len(text) <= 48 and text in cache:
            return list(cache[text])
        ids = self._encode(text.lower() if self.cfg.lowercase else text)
        if len(text) <= 48:
            if len(cache) >= 200_000:
                cache.clear()
            cache[text] = tuple(ids)
        return list(ids)

    def segments_for_product(self, p: Product, view: str = "full") -> list[tuple[str, TokenType]]:
        """The typed text segments of one text view; a view that would be empty falls back to "full"."""
        segs = [(p.title, TokenType.TITLE)]
        if view != "title" and p.category:
            segs.append((" > ".join(p.category), TokenType.CATEGORY))
        if view == "full":
            segs += [(f"{k}: {v}", TokenType.ATTRIBUTE) for k, v in p.attributes.items() if str(v).strip()]
            segs.append((p.description, TokenType.DESCRIPTION))
        elif not any(text.strip() for text, _ in segs):
            return self.segments_for_product(p, "full")
        return segs

    def encode_segments(self, segments: Sequence[tuple[str, TokenType]]) -> tuple[list[int], list[int]]:
        """Tokenize segments; returns ([] , []) when every segment is empty (no text modality)."""
        ids: list[int] = []
        types: list[int] = []
        for text, ttype in segments:
            toks = self._text(text)
            ids += toks
            types += [int(ttype)] * len(toks)
        if not ids:
            return [], []
        head = [] if self.sot_id is None else [self.sot_id]
        budget = self.cfg.context_length - 1 - len(head)
        ids, types = ids[:budget], types[:budget]
        return [*head, *ids, self.eot_id], [int(TokenType.SPECIAL)] * len(head) + [*types, int(TokenType.SPECIAL)]

    def encode_product(self, p: Product, view: str = "full") -> tuple[list[int], list[int]]:
        return self.encode_segments(self.segments_for_product(p, view))

    def encode_query(self, q: Query | str) -> tuple[list[int], list[int]]:
        text = q if isinstance(q, str) else q.text
        return self.encode_segments([(text, TokenType.QUERY)])

    def encode_label(self, text: str) -> tuple[list[int], list[int]]:
        """A class / attribute-value prompt, typed as a title (what products look like)."""
        return self.encode_segments([(text, TokenType.TITLE)])


def pad_tokens(seqs: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad (ids, types) pairs to the batch's longest -> ids (B, L), types (B, L), mask (B, L)."""
    length = max((len(ids) for ids, _ in seqs), default=0)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    types = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, (s, t) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        types[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ids, types, types != int(TokenType.PAD)
