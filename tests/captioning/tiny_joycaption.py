"""A JoyCaption-shaped LLaVA small enough to build, load and run on the CPU in a second.

Same classes and file layout as ``fancyfeast/llama-joycaption-beta-one-hf-llava``: a
``LlavaForConditionalGeneration`` (SigLIP vision tower, Llama text model), a ``LlavaProcessor``
with a Llama-3-style chat template that puts ``<image>`` in the user turn, a ``tokenizer.json``
built with the ``tokenizers`` library, sharded safetensors with their index. Weights are random:
captions are word salad, which is all the tests need (they check structure, not content).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

BOS, EOS, PAD, IMAGE = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<image>"
SPECIAL = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOS, IMAGE, PAD]
WORDS = [
    "a",
    "an",
    "the",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "triangle",
    "shape",
    "photo",
    "picture",
    "image",
    "of",
    "in",
    "on",
    "with",
    "and",
    "formal",
    "tone",
    "write",
    "descriptive",
    "caption",
    "for",
    "this",
    "you",
    "are",
    "helpful",
    "captioner",
    "system",
    "user",
    "assistant",
    "bright",
    "dark",
    "small",
    "large",
    ".",
    ",",
]
# Llama 3's turn markers; the image token opens the first user turn, as JoyCaption's does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'user' and loop.index0 <= 1 %}<image>{% endif %}"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\\n\\n{% endif %}"
)
IMAGE_SIZE, PATCH = 28, 14  # 4 image tokens per image


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate([*SPECIAL, "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    # Like Llama 3's tokenizer: BOS is added by the tokenizer, not by the chat template.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    backend.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token="<unk>"
    )


def build(folder: Path, *, seed: int = 0) -> Path:
    """Save the processor and a random model into ``folder``; return it."""
    tokenizer = _tokenizer()
    ids = tokenizer.get_vocab()
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            vocab_size=len(ids),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=ids[BOS],
            eos_token_id=ids[EOS],
            pad_token_id=ids[PAD],
        ),
        image_token_index=ids[IMAGE],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[EOS], ids["<|end_of_text|>"]],
        pad_token_id=ids[PAD],
    )
    # Small shards, so the folder has the index and several shards like the real repository.
    model.save_pretrained(folder, max_shard_size="20KB")
    processor.save_pretrained(folder)
    return folder


def make_speechless(folder: Path) -> None:
    """Forbid every word in ``folder``'s generation config: only special tokens can come out,
    so every caption decodes to nothing."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text())
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    config["suppress_tokens"] = sorted(i for token, i in vocab.items() if token not in SPECIAL)
    path.write_text(json.dumps(config))
