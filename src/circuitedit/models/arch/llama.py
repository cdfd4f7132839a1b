from .base import ArchitectureAdapter

# Also SmolLM2, Mistral-style checkpoints that report model_type "llama" or "mistral".
ADAPTER = ArchitectureAdapter(
    family="llama",
    model_types=("llama", "mistral"),
    layers_path="model.layers",
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
)
