"""Image captions from JoyCaption (a LLaVA model: SigLIP vision tower + Llama 3.1) on this machine.

Used the way the model card shows: a system and a user message rendered by the processor's
chat template (which places the image token), ``processor(text=..., images=...)``, then
``generate`` with the configured sampling; only the new tokens are decoded. A batch is one
``generate`` call over several images, padded on the left so every prompt ends where generation
starts. Loading and generating block for seconds to minutes: both run in a worker thread, so the
event loop (heartbeats, events) keeps going.

The model lives only between ``open`` and ``aclose``: the caption stage frees it before the
trainer needs the GPU. Importing this module costs the ``transformers`` import (~7 s): the stage
imports it only when images need captions.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from infra.settings import Settings
from stages.captioners import CaptionError, CaptionFault

log = structlog.get_logger(__name__)

# PIL's errors for a file that is not a readable image (truncated, foreign, a decompression bomb).
_UNREADABLE = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


@dataclass(frozen=True)
class JoyCaptionOptions:
    system_prompt: str
    prompt: str
    batch_size: int = 4
    max_new_tokens: int = 300
    temperature: float = 0.6
    top_p: float = 0.9
    device: Literal["auto", "cuda", "cpu"] = "auto"

    @classmethod
    def from_settings(cls, settings: Settings) -> JoyCaptionOptions:
        return cls(
            system_prompt=settings.joycaption_system_prompt,
            prompt=settings.joycaption_prompt,
            batch_size=settings.joycaption_batch_size,
            max_new_tokens=settings.joycaption_max_new_tokens,
            temperature=settings.joycaption_temperature,
            top_p=settings.joycaption_top_p,
            device=settings.joycaption_device,
        )

    def generate_kwargs(self) -> dict[str, Any]:
        """The card's sampling settings; temperature 0 means greedy (no sampling knobs then)."""
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": None,
        }


def pick_device(choice: Literal["auto", "cuda", "cpu"]) -> tuple[str, torch.dtype]:
    """bfloat16 (the Llama's own dtype) on a GPU; float32 on the CPU, where bf16 is slow."""
    device = choice if choice != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.bfloat16 if device == "cuda" else torch.float32


class JoyCaptioner:
    """A ``BatchCaptioner`` over JoyCaption weights in a local folder."""

    def __init__(self, options: JoyCaptionOptions) -> None:
        self._options = options
        self._processor: Any = None
        self._model: LlavaForConditionalGeneration | None = None
        self._prompt = ""

    @classmethod
    async def open(cls, folder: Path, options: JoyCaptionOptions) -> JoyCaptioner:
        """Load the processor and the model from ``folder`` (never from the network).

        A folder that does not load is the worker's problem (its settings or its volume), not
        the request's: ``NO_MODEL``.
        """
        captioner = cls(options)
        device, dtype = pick_device(options.device)
        try:
            # The thread stores the model on the captioner and returns nothing: a model passed
            # back as the thread's result would stay referenced by asyncio's future until the
            # task next yields, and ``aclose`` could not free it.
            await asyncio.to_thread(captioner._load, folder, device, dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionError(
                CaptionFault.NO_MODEL, f"JoyCaption did not load from {folder}: {exc}"
            ) from None
        log.info("joycaption_loaded", folder=str(folder), device=device, dtype=str(dtype))
        return captioner

    def _load(self, folder: Path, device: str, dtype: torch.dtype) -> None:
        processor: Any = LlavaProcessor.from_pretrained(folder, local_files_only=True)
        # Left padding: in a batch every prompt must end where the new tokens go.
        processor.tokenizer.padding_side = "left"
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        self._prompt = _prompt(processor, self._options)
        self._processor = processor
        # from_pretrained leaves the model in eval mode (no dropout).
        self._model = LlavaForConditionalGeneration.from_pretrained(
            folder,
            dtype=dtype,
            device_map=device if device != "cpu" else None,
            local_files_only=True,
        )

    async def caption_batch(self, media: Sequence[Path]) -> dict[Path, str | CaptionError]:
        return await asyncio.to_thread(self._caption_batch, list(media))

    async def aclose(self) -> None:
        """Drop the model and give its memory back (the trainer needs the whole GPU next)."""
        on_gpu = self._model is not None and self._model.device.type == "cuda"
        self._model = None
        self._processor = None
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    def _caption_batch(self, media: list[Path]) -> dict[Path, str | CaptionError]:
        results: dict[Path, str | CaptionError] = {}
        images: dict[Path, Image.Image] = {}
        for path in media:
            try:
                images[path] = _read_image(path)
            except _UNREADABLE as exc:
                results[path] = CaptionError(
                    CaptionFault.FILE_REJECTED, f"{path.name} is not a readable image: {exc}"
                )
        if images:
            texts = self._generate(list(images.values()))
            for path, text in zip(images, texts, strict=True):
                # Sampling can end a caption at once (or with special tokens only): such an image
                # is skipped like any unreadable file, as an empty Gemini answer is.
                results[path] = text or CaptionError(
                    CaptionFault.FILE_REJECTED, f"JoyCaption returned no caption for {path.name}"
                )
        return {path: results[path] for path in media}

    def _generate(self, images: list[Image.Image]) -> list[str]:
        model = self._model
        if model is None:
            raise RuntimeError("the captioner was closed")
        inputs = self._processor(
            text=[self._prompt] * len(images), images=images, return_tensors="pt", padding=True
        ).to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        try:
            with torch.inference_mode():
                output = model.generate(**inputs, **self._options.generate_kwargs())
        except torch.OutOfMemoryError:
            raise CaptionError(
                CaptionFault.TRANSIENT,
                f"JoyCaption ran out of GPU memory on a batch of {len(images)} images; "
                "lower LORAQ_JOYCAPTION_BATCH_SIZE",
            ) from None
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self._processor.tokenizer.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [" ".join(text.split()) for text in texts]


def _read_image(path: Path) -> Image.Image:
    """Decode the whole file now: a truncated image fails here, not inside the processor."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _prompt(processor: Any, options: JoyCaptionOptions) -> str:
    """The conversation as the model was trained on it; the same for every image."""
    conversation = [
        {"role": "system", "content": options.system_prompt},
        {"role": "user", "content": options.prompt},
    ]
    text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text
