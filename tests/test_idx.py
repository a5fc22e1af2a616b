import numpy as np
import pytest
import torch
from conftest import write_idx

from aelab.data.idx_reader import read_idx, read_idx_shape
from aelab.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "images-idx3-ubyte", array, gz=gz)
    assert read_idx_shape(path) == (2, 3, 4)
    assert torch.equal(read_idx(path), torch.from_numpy(array))


def test_wrong_magic_number_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: not an unsigned-byte IDX file"):
        read_idx(path)


def test_truncated_file_is_rejected(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((10, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"truncated: the header promises shape \(10, 4, 4\)"):
        read_idx(path)


def test_corrupted_gzip_is_rejected(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((10, 4, 4), np.uint8), gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(path)
