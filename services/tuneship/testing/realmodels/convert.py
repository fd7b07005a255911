"""Steps 3 and 4 of ``real_model``: a GGUF dequantized into a Hugging Face model
directory (float32 safetensors, the tokenizer with its chat template, a generation
config and, for a SentencePiece vocabulary, a ``tokenizer.model`` rebuilt from the GGUF's
token list with its added tokens declared), and the sanity checks of that directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.chat_templates import family_template
from tuneship.common.errors import FailedPrecondition
from tuneship.testing.realmodels.sources import RealModelSource, build_step

# GGUF token types are SentencePiece's piece types, number for number.
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6

SANITY_TEXT = "Hello, world!  It is 2024.\n\n\tTabs, naïve café, 日本語 and 🤖.\n"
"""Plain text (no special tokens) both tokenizers of a SentencePiece model must agree on."""


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer a GGUF describes, as llama.cpp reads it."""

    model: str
    """``tokenizer.ggml.model``: ``llama`` (SentencePiece) or ``gpt2`` (byte-level BPE)."""
    pre: str | None
    tokens: list[str]
    scores: list[float] | None
    types: list[int]
    special_ids: dict[str, int]
    """``bos``, ``eos``, ``unk``, ``pad`` where the GGUF names them."""
    add_space_prefix: bool

    @classmethod
    def read(cls, gguf: Path) -> GgufVocab:
        from gguf import GGUFReader

        fields = GGUFReader(gguf).fields

        def value(key: str, default: Any = None) -> Any:
            return fields[key].contents() if key in fields else default

        keys = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
        special = {name: value(f"tokenizer.ggml.{key}_token_id") for name, key in keys.items()}
        return cls(
            model=value("tokenizer.ggml.model"),
            pre=value("tokenizer.ggml.pre"),
            tokens=value("tokenizer.ggml.tokens"),
            scores=value("tokenizer.ggml.scores"),
            types=value("tokenizer.ggml.token_type"),
            special_ids={k: int(v) for k, v in special.items() if v is not None},
            # llama.cpp's default for a SentencePiece vocabulary that does not say
            add_space_prefix=bool(value("tokenizer.ggml.add_space_prefix", True)),
        )


def convert_gguf(source: RealModelSource, gguf: Path, out: Path) -> Path:
    """Steps 3 and 4: the HF model directory ``out`` converted from ``gguf``, checked."""
    if out.is_dir():
        return out
    with build_step(f"convert {gguf.name}", out) as work:
        vocab = GgufVocab.read(gguf)
        _save_model(gguf, work)
        tokenizer = _save_tokenizer(source, gguf, vocab, work)
        if vocab.model == "llama":
            (work / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
            _declare_added_tokens(work / "tokenizer_config.json", vocab)
        _save_generation_config(source, vocab, tokenizer, work)
        check_model_dir(work)
    return out


def _save_model(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The loaded model stays marked as GGUF-quantized, which save_pretrained refuses,
    # though its weights are already dense: a plain model of the same config takes them.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.save_pretrained(out)


def _save_tokenizer(source: RealModelSource, gguf: Path, vocab: GgufVocab, out: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if vocab.pre == "smollm":
        _split_digits(tokenizer)
    if not tokenizer.chat_template:
        if source.template_family is None:
            raise FailedPrecondition(f"{gguf.name} has no chat template and none is configured")
        tokenizer.chat_template = family_template(source.template_family)
    tokenizer.save_pretrained(out)
    return tokenizer


def _split_digits(tokenizer: Any) -> None:
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM's own tokenizer.json) splits off
    # every digit before the GPT-2 split; transformers' GGUF loader does not know it.
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def sentencepiece_model(vocab: GgufVocab) -> bytes:
    """A SentencePiece ``tokenizer.model`` with the GGUF's pieces, scores and types.

    ``convert_hf_to_gguf.py`` takes the SentencePiece path only when this file exists,
    and that path is the one that writes back exactly the GGUF's vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    if vocab.scores is None:
        raise FailedPrecondition("a SentencePiece GGUF vocabulary without scores")
    unk = vocab.special_ids.get("unk", -1)
    proto = sp.ModelProto()  # type: ignore[attr-defined]
    for index, (text, score, kind) in enumerate(
        zip(vocab.tokens, vocab.scores, vocab.types, strict=True)
    ):
        piece = proto.pieces.add()
        piece.piece = _piece_spelling(text, kind)
        piece.score = score
        # The convert script marks <unk> a control token; SentencePiece needs one UNKNOWN.
        piece.type = _UNKNOWN if index == unk else kind
    trainer = proto.trainer_spec
    trainer.model_type = sp.TrainerSpec.BPE  # type: ignore[attr-defined]
    trainer.vocab_size = len(vocab.tokens)
    trainer.byte_fallback = _BYTE in vocab.types
    for name in ("unk", "bos", "eos", "pad"):
        index = vocab.special_ids.get(name, -1)
        setattr(trainer, f"{name}_id", index)
        if index >= 0:
            setattr(trainer, f"{name}_piece", vocab.tokens[index])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = vocab.add_space_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return bytes(proto.SerializeToString())


def _piece_spelling(text: str, kind: int) -> str:
    # The convert script writes the spaces of user-defined pieces as " "; SentencePiece
    # (and the convert script's input) spells them "\u2581".
    return text.replace(" ", "\u2581") if kind == _USER_DEFINED else text


def _declare_added_tokens(tokenizer_config: Path, vocab: GgufVocab) -> None:
    """List the GGUF's control and user-defined tokens in ``added_tokens_decoder``.

    transformers 5 no longer writes that key, but ``convert_hf_to_gguf.py`` reads it on
    the SentencePiece path to type these tokens: without it the newline and space runs
    and ``<table>`` come back as normal tokens (which llama.cpp then splits) and
    ``<unk>`` as unknown. Only content and ``special``: other flags change how
    transformers itself matches the tokens.
    """
    config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(index): {
            "content": _piece_spelling(text, kind),
            "special": kind == _CONTROL,
        }
        for index, (text, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True))
        if kind in (_CONTROL, _USER_DEFINED)
    }
    tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _save_generation_config(
    source: RealModelSource, vocab: GgufVocab, tokenizer: Any, out: Path
) -> None:
    from transformers import GenerationConfig

    eos: int | list[int] = vocab.special_ids["eos"]
    if source.end_of_turn is not None:
        eos = [vocab.special_ids["eos"], tokenizer.convert_tokens_to_ids(source.end_of_turn)]
    GenerationConfig(
        bos_token_id=vocab.special_ids.get("bos"),
        eos_token_id=eos,
        pad_token_id=vocab.special_ids.get("pad"),
    ).save_pretrained(out)


def check_model_dir(model: Path) -> None:
    """Step 4, cheap checks of a converted directory: the tokenizer has exactly one
    token per embedding row, ``tokenizer.model`` (if any) tokenizes as ``tokenizer.json``
    does, and the chat template renders a conversation. ``FailedPrecondition`` if not."""
    from transformers import AutoTokenizer

    from tuneship.common.chat import render_chat

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = embedding_rows(model)
    if len(tokenizer) != rows:
        raise FailedPrecondition(
            f"the tokenizer has {len(tokenizer)} tokens, the embedding {rows} rows",
            where=str(model),
        )
    if (model / "tokenizer.model").is_file():
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
        by_model = processor.encode(SANITY_TEXT)
        by_json = tokenizer(SANITY_TEXT, add_special_tokens=False)["input_ids"]
        if by_model != by_json:
            raise FailedPrecondition(
                f"tokenizer.model and tokenizer.json disagree: {by_model} != {by_json}",
                where=str(model),
            )
    hello = [{"role": "user", "content": "Hello there"}]
    if "Hello there" not in render_chat(tokenizer, hello, generation_prompt=True):
        raise FailedPrecondition("the chat template drops the user's message", where=str(model))


def embedding_rows(model: Path) -> int:
    """Rows of the input embedding in ``model``'s safetensors (read from the header)."""
    from safetensors import safe_open

    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith("embed_tokens.weight"):
                    return int(tensors.get_slice(key).get_shape()[0])
    raise FailedPrecondition("no embed_tokens.weight in the safetensors", where=str(model))
