from .base import ArchitectureAdapter

# Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj; PEFT ships no IA3 mapping for
# it, which is why targets always come from this adapter, never from PEFT's defaults.
ADAPTER = ArchitectureAdapter(
    family="phi3",
    model_types=("phi3",),
    layers_path="model.layers",
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
    attn_in=("self_attn.qkv_proj",),
    mlp_in=("mlp.gate_up_proj",),
)
