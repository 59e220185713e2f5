import io

import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import (
    ImageDecodeError,
    ImageTooComplexError,
    ImageTooLargeError,
    PreprocessContract,
    array_to_png,
    bytes_to_array,
    jpeg_scan_count,
    make_grid,
    webp_size,
)
from tests.hostile_images import many_frame_gif, many_page_tiff, progressive_jpeg_bomb

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


def test_png_round_trip_and_grid_shape():
    images = np.random.default_rng(0).random((5, 1, 4, 6)).astype(np.float32)
    grid = make_grid(images, columns=3, padding=2)
    assert grid.shape == (1, 2 * 6 + 2, 3 * 8 + 2)
    decoded = np.asarray(Image.open(io.BytesIO(array_to_png(grid))))
    assert decoded.shape == (14, 26)


def test_contract_round_trips_through_its_description():
    described = PreprocessContract(input_shape=(3, 32, 32), resize_filter="lanczos").describe()
    assert PreprocessContract.from_dict(described) == PreprocessContract(
        input_shape=(3, 32, 32), resize_filter="lanczos"
    )
    assert described["mode"] == "RGB" and described["size"] == [32, 32]


def test_only_the_listed_formats_are_opened():
    for fmt in ("ICO", "PPM", "TGA", "PCX", "SGI"):
        with pytest.raises(ImageDecodeError, match="PNG, JPEG, WebP, BMP, GIF or TIFF"):
            bytes_to_array(png(Image.new("L", (28, 28)), fmt), CONTRACT)


def test_frames_are_never_counted_or_sought(monkeypatch):
    from PIL import GifImagePlugin, TiffImagePlugin

    for plugin in (GifImagePlugin.GifImageFile, TiffImagePlugin.TiffImageFile):
        monkeypatch.setattr(plugin, "n_frames", property(lambda self: pytest.fail("n_frames walked")))
        monkeypatch.setattr(plugin, "seek", lambda self, frame: pytest.fail("seek called"))
    assert bytes_to_array(many_frame_gif(1000), CONTRACT).max() == pytest.approx(200 / 255)
    assert bytes_to_array(many_page_tiff(100), CONTRACT).max() == pytest.approx(128 / 255)


def test_jpeg_scans_are_counted_exactly_past_the_fast_bound():
    progressive = png(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG", progressive=True)
    assert jpeg_scan_count(progressive, stop_after=64) == 10  # libjpeg's colour script
    # a comment holding the SOS marker's bytes lifts the fast bound over the cap, not the count
    commented = progressive[:2] + b"\xff\xfe" + (2 + 200).to_bytes(2, "big") + b"\xff\xda" * 100 + progressive[2:]
    assert commented.count(b"\xff\xda") == 110 and jpeg_scan_count(commented, stop_after=64) == 10
    assert bytes_to_array(commented, CONTRACT).shape == (1, 28, 28)


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding():
    bomb = progressive_jpeg_bomb((64, 64), repeats=70)
    assert jpeg_scan_count(bomb, stop_after=64) == 65  # stops counting past the cap
    with pytest.raises(ImageTooComplexError, match="more than 64 scans"):
        bytes_to_array(bomb, CONTRACT)
    assert bytes_to_array(bomb, CONTRACT, max_jpeg_scans=100).shape == (1, 28, 28)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    levels = np.array([[0, 257, 257 * 128, 65535]], dtype=np.uint16).repeat(28, 0).repeat(7, 1)  # (28, 28)
    for fmt in ("PNG", "TIFF"):
        out = bytes_to_array(png(Image.fromarray(levels), fmt), CONTRACT)
        np.testing.assert_allclose(out[0, 0, ::7], np.array([0, 1, 128, 255]) / 255, atol=1e-7)


@pytest.mark.parametrize(
    "array, words",
    [(np.zeros((28, 28), np.float32), "floating-point"), (np.zeros((28, 28), np.int32), "32-bit integer")],
)
def test_images_without_a_pixel_range_are_refused(array, words):
    with pytest.raises(ImageDecodeError, match=words):
        bytes_to_array(png(Image.fromarray(array), "TIFF"), CONTRACT)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("CMYK", (28, 28), (0, 0, 0, 0)),
        Image.new("1", (28, 28), 1),
        Image.new("LAB", (28, 28), (255, 128, 128)),
    ],
    ids=lambda i: i.mode,
)
def test_unusual_modes_convert_to_the_contract(image):
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF"
    out = bytes_to_array(png(image, fmt), CONTRACT)
    assert out.shape == (1, 28, 28) and out.min() > 0.9  # all white


def test_palette_transparency_is_composited():
    image = Image.new("P", (28, 28), 1)
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.info["transparency"] = 1
    assert bytes_to_array(png(image, transparency=1), CONTRACT).max() == 0.0


def test_large_jpegs_and_pngs_are_reduced_close_to_a_full_size_resize():
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).resize((1024, 1024), Image.BICUBIC)
    for fmt in ("JPEG", "PNG"):
        data = png(smooth, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        full = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
        out = bytes_to_array(data, CONTRACT)
        assert np.abs(out[0] - np.asarray(full) / 255).max() < 0.02


def test_small_jpegs_are_decoded_exactly_as_a_full_decode():
    data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)), "JPEG")
    full = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(bytes_to_array(data, CONTRACT)[0], np.asarray(full, np.float32) * np.float32(1 / 255))


@pytest.mark.parametrize(
    "options",
    [{"lossless": True}, {"lossless": False}, {"save_all": True, "append_images": [Image.new("L", (30, 20), 9)]}],
    ids=["VP8L", "VP8", "VP8X"],
)
def test_webp_size_is_read_from_the_header_before_pillow_opens_it(options):
    data = png(Image.new("L", (30, 20), 200), "WEBP", **options)
    assert webp_size(data) == (30, 20)
    assert webp_size(b"RIFF\x00\x00\x00\x00WEBPXXXX" + b"\x00" * 20) is None
    with pytest.raises(ImageTooLargeError, match="30x20 = 600 pixels; the limit is 599"):
        bytes_to_array(data, CONTRACT, max_pixels=599)
