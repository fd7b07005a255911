"""Small GGUF files written with the ``gguf`` package, for tests of what reads headers."""

from __future__ import annotations

from pathlib import Path

TOKENS = ("<unk>", "<s>", "</s>", "<|im_end|>", "<extra>", "a", "b", "ab")
"""The vocabulary: unknown, bos, eos, end of turn (control), a user-defined token, pieces."""
TOKEN_TYPES = (2, 3, 3, 3, 4, 1, 1, 1)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
)
HIDDEN = 256  # k-quant row size: keeps the file shaped like the ones the export writes


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    eos: bool = True,
    eot: bool = True,
    context_length: int | None = 512,
    placeholder_scores: bool = True,
) -> Path:
    """Write a GGUF with the vocabulary above, bos 1, eos 2 and eot 3 (each optional where
    a flag says so), a chat template, an f16 embedding and an f32 output matrix."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_name("tiny-pirate")
    writer.add_license("apache-2.0")
    writer.add_file_type(1)
    if context_length is not None:
        writer.add_context_length(context_length)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(TOKENS))
    writer.add_token_types(list(TOKEN_TYPES))
    ranks = [-float(i) for i in range(len(TOKENS))]
    scores = [-1000.0] * len(TOKENS) if placeholder_scores else ranks
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    if eos:
        writer.add_eos_token_id(2)
    if eot:
        writer.add_eot_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", np.zeros((len(TOKENS), HIDDEN), dtype=np.float16))
    writer.add_tensor("output.weight", np.zeros((len(TOKENS), HIDDEN), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
