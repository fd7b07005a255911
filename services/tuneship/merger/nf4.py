"""The 4-bit NormalFloat round trip that a QLoRA adapter's base went through in training.

QLoRA trains the adapter against the base weights as bitsandbytes stores them: NF4
codes in blocks of 64 with one absmax scale per block. The adapter learns to correct
*those* weights, so merging it onto the original 16-bit weights gives a model that
was never trained. Rounding the base through NF4 first reproduces the weights the
adapter saw (bitsandbytes also stores the block scales in 8 bits, "double
quantization"; that second rounding is not reproduced and its effect is measured in
the tests).
"""

from __future__ import annotations

from typing import Any

BLOCK = 64
# The 16 NF4 code values (quantiles of a standard normal, scaled to [-1, 1]), as
# published with QLoRA and used by bitsandbytes.
NF4_CODES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_round_trip(weight: Any, block: int = BLOCK) -> Any:
    """``weight`` quantized to NF4 (blockwise absmax) and back, in its own dtype."""
    import torch

    codes = torch.tensor(NF4_CODES, dtype=torch.float32)
    midpoints = (codes[1:] + codes[:-1]) / 2
    flat = weight.detach().float().reshape(-1)
    padding = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, padding)).reshape(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    nearest = torch.bucketize(blocks / scale, midpoints)
    restored = (codes[nearest] * scale).reshape(-1)[: flat.numel()]
    return restored.reshape(weight.shape).to(weight.dtype)


def round_trip_linear_layers(model: Any) -> int:
    """Replace every linear weight but the output head by its NF4 round trip, in place.

    These are the layers bitsandbytes quantizes when a model is loaded in 4 bits (the
    embeddings and the output head stay in 16 bits). Returns the number of layers.
    """
    import torch

    head = model.get_output_embeddings()
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight.copy_(nf4_round_trip(module.weight))
                count += 1
    return count
