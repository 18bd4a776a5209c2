"""Streaming data: WebDataset shards -> augmented, tokenized batches (see `loader.py`)."""
from cmgl_dist.data.loader import make_loader
from cmgl_dist.data.shardlist import shard_urls
from cmgl_dist.data.text import tokenize_texts

__all__ = ["make_loader", "shard_urls", "tokenize_texts"]
