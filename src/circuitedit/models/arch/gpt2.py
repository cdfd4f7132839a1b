from .base import ArchitectureAdapter

# GPT-2 uses transformers' Conv1D, its weight stored as (in, out).
ADAPTER = ArchitectureAdapter(
    family="gpt2",
    model_types=("gpt2",),
    layers_path="transformer.h",
    attn_out="attn.c_proj",
    mlp_out="mlp.c_proj",
    attn_in=("attn.c_attn",),
    mlp_in=("mlp.c_fc",),
    heads_attr="n_head",
    weights_transposed=True,
)
