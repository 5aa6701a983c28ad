"""Tokenizer files for the miniatures, made here or copied from diffusion-pipe's own ``configs/``.

Nothing can be downloaded on the GPU machine, and the miniatures' embedding tables only need to
hold the ids a tokenizer produces. So:
- CLIP (Flux, SDXL): a byte-level BPE with no merges, written here: every byte is a token, which
  is all ``CLIPTokenizer`` needs (514 ids).
- T5 (Flux's second tokenizer, Wan's umT5): diffusion-pipe ships T5's SentencePiece files in
  ``configs/t5_old/``; umT5 and XLM-R read ``tokenizer.json`` too, and every id it produces
  (< 32102) fits the real models' tables (256384 and 250002 rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_BOS_ID = 512
CLIP_EOS_ID = 513
CLIP_VOCAB_SIZE = 514
T5_SOURCE_DIR = "configs/t5_old"  # inside diffusion-pipe's tree
T5_SOURCE_FILES = ("spiece.model", "tokenizer.json")


@dataclass(frozen=True)
class TokenizerFile:
    """One file of a tokenizer folder: literal text, or a file copied from diffusion-pipe."""

    name: str
    text: str | None = None
    copy_from: str | None = None  # relative to diffusion-pipe's root


@cache
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2's byte-to-unicode table, which CLIP's tokenizer runs every byte through first."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + extra)
            extra += 1
    return tuple(chr(code) for code in symbols)


def clip_vocab() -> dict[str, int]:
    """Every byte symbol alone and as a word's last symbol, then the two special tokens."""
    symbols = _byte_symbols()
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({f"{symbol}</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocab[CLIP_BOS] = CLIP_BOS_ID
    vocab[CLIP_EOS] = CLIP_EOS_ID
    assert len(vocab) == CLIP_VOCAB_SIZE
    return vocab


def clip_tokenizer_files() -> list[TokenizerFile]:
    specials = {
        "bos_token": CLIP_BOS,
        "eos_token": CLIP_EOS,
        "unk_token": CLIP_EOS,
        "pad_token": CLIP_EOS,
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    return [
        TokenizerFile("vocab.json", json.dumps(clip_vocab(), ensure_ascii=False)),
        TokenizerFile("merges.txt", "#version: 0.2\n"),
        TokenizerFile("special_tokens_map.json", json.dumps(specials, indent=2)),
        TokenizerFile("tokenizer_config.json", json.dumps({**config, **specials}, indent=2)),
    ]


def t5_tokenizer_files(model_max_length: int = 512) -> list[TokenizerFile]:
    """T5's own SentencePiece model and ``tokenizer.json``, as a ``T5Tokenizer`` folder."""
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length}
    return [
        TokenizerFile("spiece.model", copy_from=f"{T5_SOURCE_DIR}/spiece.model"),
        TokenizerFile("tokenizer.json", copy_from=f"{T5_SOURCE_DIR}/tokenizer.json"),
        TokenizerFile("special_tokens_map.json", json.dumps(specials, indent=2)),
        TokenizerFile(
            "tokenizer_config.json",
            json.dumps({**config, **specials, "extra_ids": 100}, indent=2),
        ),
    ]


def xlm_roberta_tokenizer_files() -> list[TokenizerFile]:
    """Wan's CLIP tokenizer folder (``xlm-roberta-large/``) from T5's SentencePiece files.

    Only CLIP's vision tower runs in i2v training; the text tokenizer is loaded and never used,
    so any SentencePiece vocabulary with XLM-R's special tokens serves.
    """
    specials = {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512}
    return [
        TokenizerFile("sentencepiece.bpe.model", copy_from=f"{T5_SOURCE_DIR}/spiece.model"),
        TokenizerFile("tokenizer.json", copy_from=f"{T5_SOURCE_DIR}/tokenizer.json"),
        TokenizerFile("special_tokens_map.json", json.dumps(specials, indent=2)),
        TokenizerFile("tokenizer_config.json", json.dumps({**config, **specials}, indent=2)),
    ]
