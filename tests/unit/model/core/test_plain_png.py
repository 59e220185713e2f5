"""plain_png: libspng's decode of the PNGs a model takes as they are gives Pillow's arrays bit for bit,
and every other PNG (or bytes libspng refuses) is left to Pillow, so no answer changes."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from skimage import data as skimage_data
from sklearn.datasets import load_digits

from model.core import preprocess
from model.core.preprocess import PreprocessContract, bytes_to_array, image_to_array, open_image, plain_png

GREY = PreprocessContract(input_shape=(1, 28, 28))
RGB = PreprocessContract(input_shape=(3, 32, 32))


def encoded(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def pillows(data: bytes, contract: PreprocessContract) -> np.ndarray:
    return image_to_array(open_image(data, 10**8), contract)


def grey_images() -> list[Image.Image]:
    digits = load_digits().images[:40]  # 8 x 8 in 0..16, scaled up to the model's size
    images = [Image.fromarray((d * 15).astype(np.uint8)).resize((28, 28)) for d in digits]
    camera = Image.fromarray(skimage_data.camera())
    images += [camera.crop((x, y, x + 28, y + 28)) for x in range(0, 400, 50) for y in range(0, 400, 80)]
    rng = np.random.default_rng(0)
    images += [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(10)]
    return images


def rgb_images() -> list[Image.Image]:
    astronaut = Image.fromarray(skimage_data.astronaut())
    return [astronaut.crop((x, y, x + 32, y + 32)) for x in range(0, 480, 60) for y in range(0, 480, 120)]


@pytest.mark.parametrize("options", [{}, {"compress_level": 0}, {"compress_level": 9}, {"optimize": True}])
def test_grey_pngs_of_the_models_size_decode_to_pillows_arrays_bit_for_bit(options):
    for image in grey_images():
        data = encoded(image, **options)
        fast = plain_png(data, GREY)
        assert fast is not None and fast.dtype == np.float32
        np.testing.assert_array_equal(fast, pillows(data, GREY))


def test_rgb_pngs_decode_to_pillows_arrays_bit_for_bit():
    for image in rgb_images():
        data = encoded(image)
        fast = plain_png(data, RGB)
        assert fast is not None and fast.shape == (3, 32, 32)
        np.testing.assert_array_equal(fast, pillows(data, RGB))


def with_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """The PNG with one chunk added right after IHDR."""
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:33] + chunk + data[33:]


def test_interlaced_pngs_are_left_to_pillow_which_undoes_adam7():
    """Adam7, written by hand (Pillow writes no interlaced PNG): not on the plain path, whose stream check
    counts a non-interlaced image's scanlines; Pillow decodes it to the rows."""
    rows = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]  # x0, y0, dx, dy
    raw = b"".join(
        b"".join(b"\0" + rows[y, x0::dx].tobytes() for y in range(y0, 28, dy))
        for x0, y0, dx, dy in passes
        if x0 < 28 and y0 < 28
    )
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    data = preprocess.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert plain_png(data, GREY) is None
    np.testing.assert_array_equal(bytes_to_array(data, GREY)[0], rows.astype(np.float32) * np.float32(1 / 255))


def refilled(data: bytes, kind: bytes, change) -> bytes:
    """`data` with the payload of its first `kind` chunk changed by `change`, that chunk's CRC made right
    again: what only a check of the payload itself can catch."""
    position = 8
    while data[position + 4 : position + 8] != kind:
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    length = int.from_bytes(data[position : position + 4], "big")
    payload = change(data[position + 8 : position + 8 + length])
    rebuilt = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:position] + rebuilt + data[position + 12 + length :]


def flip_last_byte(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 0xFF])


@pytest.mark.parametrize(
    "make",
    [
        lambda img: encoded(img.convert("RGB")),  # colour for a grey model: Pillow converts
        lambda img: encoded(img.resize((30, 28))),  # another size: Pillow resizes
        lambda img: encoded(img.convert("LA")),  # alpha: Pillow composites
        lambda img: encoded(img.convert("P")),  # a palette
        lambda img: encoded(img.convert("I;16")),  # 16 bits
        lambda img: encoded(img.convert("1")),  # 1 bit
        lambda img: with_chunk(encoded(img), b"tRNS", b"\x00\x00"),  # transparency
        lambda img: with_chunk(encoded(img), b"zTXt", b"k\x00\x00" + zlib.compress(b"text")),  # inflated text
        lambda img: encoded(img)[:-12],  # no IEND
        lambda img: encoded(img)[:60],  # truncated
        lambda img: encoded(img)[:40] + b"\xff" + encoded(img)[41:],  # a corrupt IDAT: libspng refuses it
        lambda img: b"".join(with_chunk(encoded(img), b"tEXt", b"k\x00v") for _ in range(1))[:33]
        + b"".join(
            struct.pack(">I", 3) + b"tEXt" + b"k\x00v" + struct.pack(">I", zlib.crc32(b"tEXtk\x00v")) for _ in range(20)
        )
        + encoded(img)[33:],  # more chunks than the plain path walks
        lambda img: encoded(img)[:29] + bytes([encoded(img)[29] ^ 1]) + encoded(img)[30:],  # IHDR's CRC wrong
        lambda img: refilled(encoded(img), b"IDAT", flip_last_byte),  # the zlib stream's Adler-32 wrong
        lambda img: refilled(encoded(img), b"IDAT", lambda p: zlib.compress(zlib.decompress(p)[:-28])),  # a row short
        lambda img: refilled(encoded(img), b"IDAT", lambda p: p + b"\x00"),  # bytes after the zlib stream
    ],
    ids=[
        "rgb",
        "size",
        "alpha",
        "palette",
        "16-bit",
        "1-bit",
        "tRNS",
        "zTXt",
        "no-IEND",
        "truncated",
        "corrupt",
        "chunks",
        "crc",
        "adler32",
        "short-stream",
        "trailing",
    ],
)
def test_other_pngs_are_left_to_pillow(make):
    data = make(grey_images()[0])
    assert plain_png(data, GREY) is None
    try:
        expected = pillows(data, GREY)
    except preprocess.ImageDecodeError:
        with pytest.raises(preprocess.ImageDecodeError):
            bytes_to_array(data, GREY)
    else:
        np.testing.assert_array_equal(bytes_to_array(data, GREY), expected)


def test_harmless_chunks_stay_on_the_plain_path():
    image = grey_images()[3]
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a test")
    data = with_chunk(encoded(image, pnginfo=info, dpi=(72, 72)), b"gAMA", struct.pack(">I", 45455))
    fast = plain_png(data, GREY)
    assert fast is not None
    np.testing.assert_array_equal(fast, pillows(data, GREY))


def test_without_pyspng_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(preprocess, "_spng", None)
    data = encoded(grey_images()[0])
    assert plain_png(data, GREY) is None
    np.testing.assert_array_equal(bytes_to_array(data, GREY), pillows(data, GREY))


def test_a_contract_whose_shape_is_a_list_decodes_alike():
    data = encoded(grey_images()[1])
    listed = preprocess.PreprocessContract(input_shape=[1, 28, 28])  # type: ignore[arg-type]
    np.testing.assert_array_equal(plain_png(data, listed), plain_png(data, GREY))
