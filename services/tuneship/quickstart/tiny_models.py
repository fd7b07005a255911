"""Tiny chat models built offline, deterministically, in seconds.

``tiny-llama2``
    SentencePiece BPE tokenizer (``tokenizer.model`` kept beside ``tokenizer.json``),
    Llama-2 ``[INST]`` template, BOS/EOS and **no pad token** (the situation in which
    people set pad = EOS and the model never learns to stop), untied embeddings.
``tiny-chatml``
    ``tokenizer.json`` only, ChatML with ``<|im_start|>``/``<|im_end|>`` as special
    tokens, eos = ``<|im_end|>``, system messages, tied embeddings.

Both are ``LlamaForCausalLM`` with hidden size 256 so that llama.cpp's K-quants apply
(their rows must be multiples of 256). Two builds with the same seed are
byte-identical.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tuneship.common.atomic import staged_dir
from tuneship.quickstart.conversations import sample_conversations

FIXTURES = ("tiny-llama2", "tiny-chatml")


@dataclass(frozen=True)
class TinyShape:
    """Model dimensions shared by the fixtures (small, yet K-quant friendly)."""

    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048


def data_text(name: str) -> str:
    """Text of a file bundled in ``tuneship/quickstart/data``."""
    return resources.files("tuneship.quickstart").joinpath("data", name).read_text("utf-8")


def _training_sentences(seed: int, template_markers: list[str]) -> list[str]:
    lines = [line for line in data_text("corpus.txt").splitlines() if line.strip()]
    for kind in ("chat", "pirate"):
        for conversation in sample_conversations(64, seed, kind=kind):
            lines.extend(message["content"] for message in conversation)
    lines.extend(template_markers)
    return lines


def _train_sentencepiece(sentences: list[str], vocab_size: int, user_symbols: list[str]) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        num_threads=1,  # multi-threaded training is not deterministic
        shuffle_input_sentence=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=user_symbols,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _save_model(
    out: Path, shape: TinyShape, vocab_size: int, seed: int, tied: bool, ids: dict
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], do_sample=False, max_new_tokens=64
    ).save_pretrained(out)


def build_tiny_llama2(out: Path, seed: int = 0, shape: TinyShape | None = None) -> Path:
    """Build the ``tiny-llama2`` fixture into ``out`` (replaced if present)."""
    from transformers import AutoTokenizer

    shape = shape or TinyShape()
    markers = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
    model_proto = _train_sentencepiece(
        _training_sentences(seed, markers), shape.vocab_size, user_symbols=[]
    )
    with staged_dir(out) as work:
        (work / "tokenizer.model").write_bytes(model_proto)
        _write_json(
            work / "tokenizer_config.json",
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": shape.max_position_embeddings,
            },
        )
        tokenizer = AutoTokenizer.from_pretrained(work)
        tokenizer.chat_template = data_text("llama2.jinja")
        tokenizer.save_pretrained(work)
        ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}
        _save_model(work, shape, len(tokenizer), seed, tied=False, ids=ids)
    return out


def build_tiny_chatml(out: Path, seed: int = 0, shape: TinyShape | None = None) -> Path:
    """Build the ``tiny-chatml`` fixture into ``out`` (replaced if present)."""
    from transformers import AutoTokenizer

    shape = shape or TinyShape()
    specials = ["<|im_start|>", "<|im_end|>"]
    model_proto = _train_sentencepiece(
        _training_sentences(seed, ["system", "user", "assistant"]),
        shape.vocab_size,
        user_symbols=specials,
    )
    with staged_dir(out) as work:
        source = work / "sp"
        source.mkdir()
        (source / "tokenizer.model").write_bytes(model_proto)
        _write_json(
            source / "tokenizer_config.json",
            {
                "tokenizer_class": "LlamaTokenizer",
                "unk_token": "<unk>",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "add_bos_token": False,
                "add_eos_token": False,
                "model_max_length": shape.max_position_embeddings,
            },
        )
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
        tokenizer.chat_template = data_text("chatml.jinja")
        shutil.rmtree(source)
        tokenizer.save_pretrained(work)
        ids = {"bos": None, "eos": tokenizer.convert_tokens_to_ids("<|im_end|>")}
        _save_model(work, shape, len(tokenizer), seed, tied=True, ids=ids)
    return out


def build_fixture(name: str, out: Path, seed: int = 0) -> Path:
    """Build a fixture by name (see ``FIXTURES``)."""
    builders = {"tiny-llama2": build_tiny_llama2, "tiny-chatml": build_tiny_chatml}
    if name not in builders:
        raise ValueError(f"unknown fixture {name!r}; choose one of {', '.join(FIXTURES)}")
    return builders[name](out, seed)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
