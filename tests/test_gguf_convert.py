"""GGUF files: a recipe's `model.gguf_file` loads the model the file holds, and so does the conversion to safetensors;
`gguf_convert.read_once` parses a file's header once and builds gguf's tensor-name map once per shape within a load,
and leaves gguf's own reader and map outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gsm8k_tr import gguf_convert

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def _finish(writer: object) -> None:
    """Write out what `writer` was given, in the order a GGUF file holds it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write(path: Path, columns: int) -> None:
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, columns), np.float32))
    _finish(writer)


def test_a_file_is_parsed_once_within_the_block_and_again_once_replaced(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    _write(path, 8)
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_convert.read_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first  # transformers passes a str; the same file by any name
        assert first.tensors[0].shape.tolist() == [8, 4]
        same = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is same
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not same
        _write(path, 16)  # a file replaced in between is read again
        second = gguf.GGUFReader(path)
        assert second is not first and second.tensors[0].shape.tolist() == [16, 4]
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_map)
    assert type(gguf.GGUFReader(path)) is reader_class


def test_the_library_is_restored_when_the_block_fails(tmp_path: Path) -> None:
    reader_class = gguf.GGUFReader
    with pytest.raises(FileNotFoundError), gguf_convert.read_once():
        gguf.GGUFReader(tmp_path / "missing.gguf")
    assert gguf.GGUFReader is reader_class


def _llama_gguf(path: Path, tokenizer_dir: Path) -> object:
    """A random 2-layer Llama with the tiny model's vocabulary, written as a GGUF file the way llama.cpp lays one out
    (its own tensor names, q and k rows reordered for its rotary layout); returns the model as written."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = {**spec["model"]["vocab"], **{added["content"]: added["id"] for added in spec["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    heads, kv_heads = 4, 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                         max_position_embeddings=256, tie_word_embeddings=False))
    writer = gguf.GGUFWriter(path, arch="llama")
    for add, value in ((writer.add_block_count, 2), (writer.add_context_length, 256),
                       (writer.add_embedding_length, 64), (writer.add_feed_forward_length, 128),
                       (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_rope_freq_base, 10000.0),  # LlamaConfig's default
                       (writer.add_layer_norm_rms_eps, model.config.rms_norm_eps),
                       (writer.add_rope_dimension_count, 16),
                       (writer.add_vocab_size, len(tokens)), (writer.add_tokenizer_model, "gpt2"),
                       (writer.add_token_list, tokens), (writer.add_token_types, [3] + [1] * (len(tokens) - 1)),
                       (writer.add_token_merges, [" ".join(pair) for pair in spec["model"]["merges"]]),
                       (writer.add_bos_token_id, 0), (writer.add_eos_token_id, vocab["<|stop|>"])):
        add(value)
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if name.startswith("model.layers."):
            _, _, layer, *module, kind = name.split(".")
            part = parts[".".join(module)]
            if part in ("attn_q", "attn_k"):  # llama.cpp's order of rows within each head
                count = heads if part == "attn_q" else kv_heads
                array = array.reshape(count, 2, -1, array.shape[1]).swapaxes(1, 2).reshape(array.shape)
            name = f"blk.{layer}.{part}.{kind}"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                    "lm_head.weight": "output.weight"}[name]
        writer.add_tensor(name, np.ascontiguousarray(array))
    _finish(writer)
    return model


def test_a_recipes_gguf_file_loads_the_model_it_holds_reading_its_header_once(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig

    written = _llama_gguf(tmp_path / "model.gguf", tiny_model_dir)
    reads = []

    class Counted(gguf.GGUFReader):
        def __init__(self, *args, **kwargs) -> None:
            reads.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counted)
    recipe = ModelConfig(name_or_path=str(tmp_path), gguf_file="model.gguf")
    model = modeling.load_model(recipe)
    assert len(reads) == 1  # the config, the config again and the weights: transformers would parse it three times
    assert not model.is_quantized and not hasattr(model.config, "quantization_config")
    loaded, expected = model.state_dict(), written.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tokenizer = modeling.load_tokenizer(recipe)
    assert tokenizer.convert_ids_to_tokens([0, len(tokenizer) - 1]) == ["<|endoftext|>", "<|stop|>"]
    # The conversion `builtin:smollm2-135m` takes: a safetensors folder of the same weights, an ordinary model.
    gguf_convert.convert(tmp_path / "model.gguf", tmp_path / "converted")
    assert not (tmp_path / "converted" / "config.json").read_text().count("quantization_config")
    converted = modeling.load_model(ModelConfig(name_or_path=str(tmp_path / "converted"))).state_dict()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
