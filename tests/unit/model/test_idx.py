import gzip

import numpy as np
import pytest

from model.idx import IdxFormatError, parse_idx, read_idx, write_idx


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip_raw_and_gzipped(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(read_idx(tmp_path / name), images)


def test_reads_the_header_written_by_hand(tmp_path):
    # magic 0x00000801 (unsigned byte, 1 dim), 3 items
    (tmp_path / "labels.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), [7, 8, 9])


def test_big_endian_int32_values():
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (1).to_bytes(4, "big") + (70000).to_bytes(4, "big")
    np.testing.assert_array_equal(parse_idx(data), [1, 70000])


def test_bad_magic_is_refused():
    with pytest.raises(IdxFormatError, match="magic"):
        parse_idx(bytes([1, 2, 3, 4, 5]))


def test_truncated_payload_is_refused():
    with pytest.raises(IdxFormatError, match="declares shape"):
        parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
