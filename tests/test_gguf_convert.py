"""`gguf_convert.read_once`: within it, a GGUF file's header is parsed once and gguf's tensor-name map built once per
shape; outside it, gguf's own reader and map."""

from __future__ import annotations

from pathlib import Path

import pytest

from gsm8k_tr import gguf_convert

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def _write(path: Path, columns: int) -> None:
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, columns), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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
