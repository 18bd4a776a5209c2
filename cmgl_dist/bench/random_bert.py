"""A BERT-base folder from random weights and a vocab.txt, for timing the GLoRIA recipe offline.

    python -m cmgl_dist.bench.random_bert --vocab VOCAB.txt OUT [--tiny]
    -> OUT/ (tokenizer + BertModel, save_pretrained), a folder for `model.text_encoder`;
       prints `text encoder vocabulary: N`. --tiny: the tests' tiny BERT shape with the same
       vocabulary (a CPU run of the check trains that one; it still builds and checks BERT-base)

The GPU checks (benchmarks/gpu_check.sh, gpu_stage_local.sh) time the recipe without downloading
weights: the encoder's speed does not depend on its values, only on its shape, and BERT-base's
shape includes its 30522-row embedding. MiniLM's vocab.txt is BERT-base uncased's. The vocabulary
goes in as `vocab=`: transformers 5.x ignores `vocab_file=` and builds a 5-token tokenizer, which
would time a BERT 23 M parameters short on reports 0.7x their length; so the folder is reloaded
the way training loads it and both sizes are checked (`check_vocabulary`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

BERT_BASE_VOCABULARY = 30522


def build_random_bert(vocab: Path, out: Path, expected: Optional[int] = BERT_BASE_VOCABULARY,
                      shape: Optional[dict] = None) -> int:
    """Write the folder; its vocabulary size, checked against `expected` (None: any) and the model.
    `shape`: BertConfig fields other than the vocabulary (default: BERT-base's)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from cmgl_dist.model.text_backbone import check_vocabulary, embedding_rows, load_tokenizer

    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab}: no such vocabulary file")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    if expected is not None and len(tokenizer) != expected:
        raise ValueError(f"{vocab}: {len(tokenizer)} tokens, expected {expected}")
    model = BertModel(BertConfig(vocab_size=len(tokenizer), **(shape or {})))
    check_vocabulary(tokenizer, embedding_rows(model), str(vocab))
    tokenizer.save_pretrained(str(out))
    model.save_pretrained(str(out))
    return check_vocabulary(load_tokenizer(str(out), local_files_only=True), embedding_rows(model), str(out))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--vocab", required=True, type=Path, help="a BERT vocab.txt (one piece per line)")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape (TINY_BERT_SHAPE), not BERT-base's")
    args = parser.parse_args(argv)
    try:
        from cmgl_dist.model.text_backbone import TINY_BERT_SHAPE

        size = build_random_bert(args.vocab, args.out, shape=TINY_BERT_SHAPE if args.tiny else None)
    except (OSError, ValueError) as err:
        print(f"random_bert: {err}")
        return 1
    print(f"{'tiny ' if args.tiny else ''}text encoder vocabulary: {size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
