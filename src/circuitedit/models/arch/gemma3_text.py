from .base import ArchitectureAdapter

# One KV head per layer with a norm after k_proj: per-head targets live on o_proj's input.
ADAPTER = ArchitectureAdapter(
    family="gemma3_text",
    model_types=("gemma3_text",),
    layers_path="model.layers",
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out_norm="post_feedforward_layernorm",
)
