"""Which dimension a tensor split slices each parameter along, and that slices merge back to the whole."""

import pytest
import torch

from llm import tensor_split
from llm.config import ModelConfig
from llm.model import Transformer


def test_column_projections_split_rows_row_projections_columns_vocabulary_rows_and_norms_nothing():
    model = Transformer(ModelConfig(dim=32, layers=1, heads=4, kv_heads=2, multiple_of=16), vocab_size=50)
    dims = {name: tensor_split.split_dim(name) for name, _ in model.named_parameters()}
    assert dims == {
        "embed.weight": 0,
        "layers.0.attn_norm.weight": None,
        "layers.0.attn.wq.weight": 0,
        "layers.0.attn.wk.weight": 0,
        "layers.0.attn.wv.weight": 0,
        "layers.0.attn.wo.weight": 1,
        "layers.0.ffn_norm.weight": None,
        "layers.0.ffn.w1.weight": 0,
        "layers.0.ffn.w2.weight": 1,
        "layers.0.ffn.w3.weight": 0,
        "head.norm.weight": None,
        "head.proj.weight": 0,
    }


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_slices_in_rank_order_merge_back_to_the_whole_parameter(ranks):
    model = Transformer(ModelConfig(dim=32, layers=1, heads=4, kv_heads=2, multiple_of=16), vocab_size=50)
    for name, whole in model.state_dict().items():
        slices = [tensor_split.shard(name, whole, rank, ranks) for rank in range(ranks)]
        assert torch.equal(tensor_split.merge(name, slices), whole), name


def test_an_uneven_vocabulary_gives_the_first_ranks_one_row_more():
    assert [tensor_split.row_range(50, rank, 3) for rank in range(3)] == [(0, 17), (17, 34), (34, 50)]
    rows = torch.arange(50.0)[:, None]
    assert [tuple(tensor_split.shard("embed.weight", rows, r, 3)[[0, -1], 0].tolist()) for r in range(3)] == [
        (0.0, 16.0),
        (17.0, 33.0),
        (34.0, 49.0),
    ]
