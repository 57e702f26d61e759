"""Turning one decoded image of any size and mode into a square uint8 (C, R, R) array.

Every source goes through `to_square_array`, so MNIST, folders and arrays are resized and converted
by exactly the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Pillow's resize widens the filter support when it downsamples, so BILINEAR is antialiased too; it is
# used for every resize (up and down) so that all sources are treated alike. Unlike LANCZOS it never
# overshoots, so flat regions and MNIST's black background stay exactly flat.
RESAMPLE = Image.Resampling.BILINEAR

# Pillow opens 16-bit greyscale files in these modes; its own conversion to "L" clips at 255 instead
# of rescaling, which would turn most 16-bit images white.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def pil_mode(channels: int) -> str:
    """The Pillow mode of an output image with `channels` channels."""
    return "L" if channels == 1 else "RGB"


CROPS = ("fit", "adm")


def to_square_array(image: Image.Image, resolution: int, channels: int, crop: str = "fit") -> np.ndarray:
    """Convert `image` to `channels` channels and fit it into a resolution x resolution square.

    `crop` "fit" is one antialiased resize of the centred square; "adm" is the preprocessing of ADM and every
    ImageNet generator since (guided-diffusion's `center_crop_arr`), which the real images of a full-scale run
    must share with the reference statistics. Returns a uint8 array of shape (channels, resolution, resolution).
    """
    image = _flatten_alpha(_to_eight_bit(image))
    convert = {"fit": _fit_square, "adm": _adm_center_crop}[crop]
    image = convert(image.convert(pil_mode(channels)), resolution)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_image_file(path: Path) -> Image.Image:
    """Fully decode an image file, applying its EXIF orientation (so pixels match what viewers show).

    Errors of any kind propagate; the caller names the file.
    """
    with Image.open(path) as handle:
        handle.load()
        # exif_transpose returns a new image, which stays valid once the file is closed.
        return ImageOps.exif_transpose(handle)


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """Rescale 16-bit greyscale to 8 bits (0..65535 -> 0..255); leave other modes alone."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images onto black, the background of MNIST-style data.

    Plain conversion to "L"/"RGB" would keep whatever colour hides under transparent pixels.
    """
    if not image.has_transparency_data:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba)


def _adm_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Halve with a box filter while the short side is at least twice the target, resize the short side to the
    target with bicubic, then cut the centred square (integer offsets, as ADM does)."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _fit_square(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the shortest side to `resolution` and keep the centred square.

    Done as one resize of the centred square box, which equals resize-then-crop without rounding the
    intermediate size.
    """
    width, height = image.size
    if width == height == resolution:
        return image  # already right; skipping the resample keeps the pixels exact
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((resolution, resolution), RESAMPLE, box=(left, top, left + side, top + side))
