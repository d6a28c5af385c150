"""Embedding export: encoder + shard set -> sharded safetensors files users load without mmrep."""

from mmrep.export.format import iter_parts, load_embeddings, read_index

__all__ = ["load_embeddings", "iter_parts", "read_index"]
