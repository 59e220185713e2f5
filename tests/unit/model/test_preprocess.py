import io

import numpy as np
import pytest
from PIL import Image

from model.preprocess import (ImageDecodeError, ImageTooLargeError, PreprocessContract, array_to_png, binarize,
                              bytes_to_array, dequantize, make_grid)

CONTRACT = PreprocessContract(input_shape=(1, 28, 28))


def png(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_grey_28x28_passes_through_scaled_to_unit_range():
    pixels = np.arange(784, dtype=np.uint8).reshape(28, 28)
    out = bytes_to_array(png(Image.fromarray(pixels)), CONTRACT)
    assert out.shape == (1, 28, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], pixels / 255.0, atol=1e-7)


def test_colour_is_converted_to_luma_and_resized():
    out = bytes_to_array(png(Image.new("RGB", (56, 84), (255, 0, 0))), CONTRACT)
    assert out.shape == (1, 28, 28)
    assert out[0, 10, 10] == pytest.approx(76 / 255)  # ITU-R 601-2: 0.299 * 255


def test_transparent_pixels_become_the_background():
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    image.putpixel((3, 4), (255, 255, 255, 255))
    out = bytes_to_array(png(image), CONTRACT)
    assert out[0, 4, 3] == 1.0 and out.sum() == 1.0


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("L", (28, 28), 255), Image.new("L", (28, 28), 0)]
    data = png(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert bytes_to_array(data, CONTRACT).min() == 1.0


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF"])
def test_other_formats_decode(fmt):
    assert bytes_to_array(png(Image.new("L", (28, 28), 128), fmt), CONTRACT).shape == (1, 28, 28)


def test_truncated_png_is_a_decode_error():
    data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError):
        bytes_to_array(data[: len(data) // 2], CONTRACT)


def test_garbage_is_a_decode_error():
    with pytest.raises(ImageDecodeError):
        bytes_to_array(b"definitely not an image", CONTRACT)


def test_too_many_pixels_are_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="pixels"):
        bytes_to_array(png(Image.new("L", (300, 300))), CONTRACT, max_pixels=100 * 100)


def test_binary_images_pass_binarisation_unchanged():
    pixels = (np.random.default_rng(0).random((1, 28, 28)) < 0.5).astype(np.float32)
    np.testing.assert_array_equal(binarize(pixels, np.random.default_rng(1)), pixels)


def test_dequantisation_stays_inside_each_pixels_bin():
    pixels = np.array([0.0, 1.0, 128 / 255], dtype=np.float32)
    out = dequantize(pixels, np.random.default_rng(0))
    assert (out >= np.array([0, 255, 128]) / 256).all() and (out < np.array([1, 256, 129]) / 256).all()


def test_png_round_trip_and_grid_shape():
    images = np.random.default_rng(0).random((5, 1, 4, 6)).astype(np.float32)
    grid = make_grid(images, columns=3, padding=2)
    assert grid.shape == (1, 2 * 6 + 2, 3 * 8 + 2)
    decoded = np.asarray(Image.open(io.BytesIO(array_to_png(grid))))
    assert decoded.shape == (14, 26)


def test_contract_round_trips_through_its_description():
    described = PreprocessContract(input_shape=(3, 32, 32), resize_filter="lanczos").describe()
    assert PreprocessContract.from_dict(described) == PreprocessContract(input_shape=(3, 32, 32), resize_filter="lanczos")
    assert described["mode"] == "RGB" and described["size"] == [32, 32]
