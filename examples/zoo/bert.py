"""A small BERT encoder (transformers' BertModel, random weights, no download).

    python -m dynexport examples/zoo/bert.py

Two layers, hidden size 32, two heads, a 100-token vocabulary. Inputs are token ids, an
attention mask with padding and token types; batch and sequence length are dynamic.
"""

import torch
from transformers import BertConfig, BertModel


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def _batch(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length  # one full row, the others padded
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    types = (torch.arange(length)[None, :] >= length // 2).long().expand(batch, length)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types.clone()}


def get_inputs():
    return _batch(2, 16, seed=1)


def get_probe_inputs():
    return _batch(3, 24, seed=2)


_b = torch.export.Dim("batch", min=1, max=64)
_s = torch.export.Dim("sequence", min=2, max=64)
dynamic_shapes = {name: {0: _b, 1: _s} for name in ("input_ids", "attention_mask",
                                                      "token_type_ids")}
