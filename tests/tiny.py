"""Tiny random models (2 layers, hidden 64) of every supported family, and a word-level
tokenizer that covers the package's built-in prompts, so unit tests run in seconds offline."""

from __future__ import annotations

import re

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

FAMILIES = ("gemma3_text", "llama", "qwen2", "phi3", "gpt2")
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
EXTRA_WORDS = (
    "The Eiffel Tower is located in the city of Paris Rome Berlin London Michael Jordan plays sport "
    "basketball baseball football tennis I am not sure about . , ? ! Where It He She They a an and "
    "Foo Bar Baz Qux capital France Italy Germany Mount Fuji Charles Dickens can be found Tourists visit"
)


def _words() -> list[str]:
    from importlib import resources

    texts = [EXTRA_WORDS]
    data = resources.files("circuitedit").joinpath("data")
    for entry in data.iterdir():
        if entry.name.endswith((".txt", ".jsonl", ".json")):
            texts.append(entry.read_text(encoding="utf-8"))
    words = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text))
    return sorted(words)


def _tokenizer_backend() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + _words())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tok


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers.processors import TemplateProcessing

    backend = Tokenizer.from_str(_tokenizer_backend().to_str())
    backend.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_config(family: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if family == "gpt2":
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, **common)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=128, **common)
    if family == "gemma3_text":
        return Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=64,
                                layer_types=["sliding_attention", "full_attention"], **llama_like)
    if family == "llama":
        return LlamaConfig(num_key_value_heads=2, **llama_like)
    if family == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **llama_like)
    if family == "phi3":
        return Phi3Config(num_key_value_heads=4, **llama_like)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    """(model, tokenizer): a random fp32 model of `family` in eval mode."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)), dtype=torch.float32)
    model.eval()
    return model, tokenizer


def keyed_edit(tmp_path, family: str, method: str, request, **editor):
    """(base model, EditResult, edit directory): `method` (a key-value editor) run through the
    pipeline on a tiny `family` model saved under tmp_path/model, at MLP layer 0 with a short value
    search and a small uncached covariance corpus (`editor` overrides EditorConfig fields), and
    its edit directory written to tmp_path/edit, naming that model as `edit --out` does."""
    import json

    from circuitedit import EditConfig, edit
    from circuitedit.workflows.outputs import write_edit_outputs

    model, tokenizer = tiny_model(family)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    keyed = {"layer": 0, "value_steps": 5, "covariance_tokens": 64, "cache_covariance": False}
    config = EditConfig.from_dict({
        "method": method, "localize": {"kinds": "mlps", "positions": "all", "top_k": 1},
        "editor": {"n_prefixes": 1, "n_template_neighbours": 2, "keyed": keyed, **editor},
        "evaluate": {"max_new_tokens": 3}})
    result = edit(model, tokenizer, request, config, controls=[])

    def name_model(tmp) -> None:
        path = tmp / "edit.json"
        path.write_text(json.dumps({"model": str(model_dir), **json.loads(path.read_text())}))

    out = tmp_path / "edit"
    write_edit_outputs(result, out, tokenizer, extra=name_model)
    return model, result, out
