"""Ground-truth factor datasets: the generated shapes, DeepMind's dSprites file format and an
.npz of one's own, read without unpickling, and one clear line for a malformed file."""

import time
from pathlib import Path

import numpy as np
import pytest

from aelab.data.factors import (
    DSPRITES_FACTORS,
    DSPRITES_SIZES,
    FactorImages,
    generate_shapes,
    iter_dsprites_images,
    read_dsprites,
    read_factor_npz,
)
from aelab.errors import ConfigError, DataError

DSPRITES_GRID = (1, *DSPRITES_SIZES)  # colour first, as latents_classes stores it


def write_dsprites(path: Path, rows: np.ndarray, **changes: np.ndarray) -> np.ndarray:
    """A small file in the real dSprites layout: the images and latents of `rows` of the full
    grid, and metadata as the real file's pickle (which the reader must not touch)."""
    classes = np.stack(np.unravel_index(rows, DSPRITES_GRID), axis=1).astype(np.int64)
    rng = np.random.default_rng(0)
    arrays = {
        "imgs": (rng.random((len(rows), 64, 64)) < 0.2).astype(np.uint8),
        "latents_classes": classes,
        "latents_values": classes.astype(np.float64),
        "metadata": np.array({"description": "a py2 pickle in the real file"}, dtype=object),
    }
    arrays.update(changes)
    np.savez_compressed(path, **arrays)
    return arrays["imgs"]


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_generated_shapes_hold_every_factor_combination_once_as_distinct_images():
    start = time.perf_counter()
    shapes = generate_shapes()
    assert time.perf_counter() - start < 5
    assert shapes.images.shape == (46080, 1, 32, 32) and shapes.images.dtype == np.uint8
    assert shapes.factors.dtype == np.int64 and shapes.sizes == (3, 6, 10, 16, 16)
    assert shapes.names == ("shape", "scale", "orientation", "x", "y")
    assert np.array_equal(shapes.index(shapes.factors), np.arange(46080))
    assert len({image.tobytes() for image in shapes.images}) == 46080
    assert shapes.images.max() == 255 and 0 < shapes.images.mean() < 40
    assert np.array_equal(generate_shapes().images, shapes.images)


def test_generated_shapes_move_one_pixel_per_position_and_grow_with_scale():
    shapes = generate_shapes(size=24, scales=3, orientations=4, positions=8)
    pixels = shapes.images[:, 0].astype(np.float64)
    mass = pixels.sum(axis=(1, 2))
    cols = (pixels.sum(axis=1) * np.arange(24)).sum(axis=1) / mass
    rows = (pixels.sum(axis=2) * np.arange(24)).sum(axis=1) / mass
    at = shapes.index
    base = np.array([[2, 1, 0, 3, 3]])
    moved_x, moved_y = base + np.array([0, 0, 0, 1, 0]), base + np.array([0, 0, 0, 0, 1])
    assert cols[at(moved_x)] - cols[at(base)] == pytest.approx(1.0)
    assert rows[at(moved_y)] - rows[at(base)] == pytest.approx(1.0)
    assert mass[at(base + np.array([0, 1, 0, 0, 0]))] > 1.5 * mass[at(base)]


def test_a_square_four_quarter_turns_apart_is_still_one_class_per_image():
    """Each shape's orientations span its own period, so orientation 0 of the square differs
    from every other orientation of it (in dSprites, 0 and 90 degrees are the same image)."""
    shapes = generate_shapes(size=24, scales=2, orientations=8, positions=4)
    square = shapes.images[shapes.index(np.array([[0, 1, o, 1, 1] for o in range(8)]))]
    assert all((square[0] != square[o]).any() for o in range(1, 8))


def test_shape_arguments_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"positions=30: must be 2 to size-4=28"):
        generate_shapes(size=32, positions=30)
    with pytest.raises(ConfigError, match="supersample=0"):
        generate_shapes(supersample=0)


def test_binary_shapes_with_supersample_1():
    shapes = generate_shapes(size=16, scales=2, orientations=2, positions=4, supersample=1)
    assert set(np.unique(shapes.images)) == {0, 255}


def test_index_finds_rows_in_any_order_and_sampling_covers_every_value():
    shapes = generate_shapes(size=16, scales=2, orientations=3, positions=4)
    order = np.random.default_rng(1).permutation(len(shapes))
    shuffled = FactorImages(shapes.images[order], shapes.factors[order], shapes.names, shapes.sizes)
    wanted = shuffled.sample_factors(500, np.random.default_rng(2))
    assert wanted.shape == (500, 5) and wanted.dtype == np.int64
    assert [len(np.unique(c)) for c in wanted.T] == list(shapes.sizes)
    assert np.array_equal(shuffled.factors[shuffled.index(wanted)], wanted)
    assert np.array_equal(
        shuffled.images[shuffled.index(wanted)], shapes.images[shapes.index(wanted)]
    )


def test_a_set_without_every_combination_cannot_be_drawn_from_by_factors():
    shapes = generate_shapes(size=16, scales=2, orientations=3, positions=4)
    partial = FactorImages(
        shapes.images[1:], shapes.factors[1:], shapes.names, shapes.sizes, "part.npz"
    )
    one_line_error(
        partial.index,
        shapes.factors[:2],
        match=r"part.npz: 287 images for 288 factor combinations \(1 without",
    )


def test_dsprites_file_reads_without_its_pickle_and_drops_colour(tmp_path):
    rows = np.array([0, 1, 31, 32 * 32 * 40 * 6 + 5, 737279])
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    imgs = write_dsprites(path, rows)
    data = read_dsprites(path)
    assert data.images.shape == (5, 1, 64, 64) and data.images.dtype == np.uint8
    assert np.array_equal(data.images[:, 0], imgs * 255)
    assert data.names == DSPRITES_FACTORS and data.sizes == (3, 6, 40, 32, 32)
    assert data.factors.tolist()[-2:] == [[1, 0, 0, 0, 5], [2, 5, 39, 31, 31]]
    assert np.array_equal(np.ravel_multi_index(data.factors.T, data.sizes), rows)
    chunks = list(iter_dsprites_images(path, chunk=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert np.array_equal(np.concatenate(chunks), data.images)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"latents_classes": np.zeros((3, 5), np.int64)},
            r"latents_classes must be integers \(N, 6\)",
        ),
        (
            {"latents_classes": np.array([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6])},
            "colour column has several values",
        ),
        (
            {"latents_classes": np.array([[0, 0, 0, 40, 0, 0]] * 3)},
            r"orientation column has values outside 0..39",
        ),
        ({"imgs": np.full((3, 64, 64), 255, np.uint8)}, "pixel values above 1"),
        ({"imgs": np.zeros((3, 64, 64), np.float32)}, r"imgs must be uint8 \(N, H, W\)"),
        ({"imgs": np.zeros((2, 64, 64), np.uint8)}, "2 imgs but 3 latents_classes rows"),
    ],
)
def test_a_malformed_dsprites_file_is_one_line_naming_it(tmp_path, changes, match):
    path = tmp_path / "dsprites.npz"
    write_dsprites(path, np.arange(3), **changes)
    assert one_line_error(read_dsprites, path, match=match).startswith(str(path))


def test_an_absent_or_foreign_dsprites_file_is_one_line(tmp_path):
    one_line_error(read_dsprites, tmp_path / "none.npz", match="none.npz: no such file")
    (tmp_path / "text.npz").write_text("not a zip")
    one_line_error(read_dsprites, tmp_path / "text.npz", match="text.npz: not a readable .npz")
    np.savez(tmp_path / "other.npz", imgs=np.zeros((1, 64, 64), np.uint8))
    one_line_error(read_dsprites, tmp_path / "other.npz", match="has no latents_classes")


def own_arrays(n: int = 12) -> dict[str, np.ndarray]:
    factors = np.stack(np.unravel_index(np.arange(n), (3, 4)), axis=1)
    return {
        "images": np.arange(n * 3 * 8 * 8, dtype=np.int64).reshape(n, 3, 8, 8).astype(np.uint8),
        "factors": factors,
        "factor_names": np.array(["floor hue", "shape"]),
        "factor_sizes": np.array([3, 4]),
    }


def test_an_npz_of_ones_own_reads_back(tmp_path):
    arrays = own_arrays()
    np.savez_compressed(tmp_path / "own.npz", **arrays)
    data = read_factor_npz(tmp_path / "own.npz")
    assert np.array_equal(data.images, arrays["images"]) and data.sizes == (3, 4)
    assert data.names == ("floor hue", "shape") and data.origin == str(tmp_path / "own.npz")
    assert np.array_equal(data.index(arrays["factors"][::-1]), np.arange(12)[::-1])
    grey = {**arrays, "images": arrays["images"][:, 0]}
    np.savez(tmp_path / "grey.npz", **grey)
    assert read_factor_npz(tmp_path / "grey.npz").images.shape == (12, 1, 8, 8)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"images": np.zeros((12, 8, 8, 3), np.uint8)},
            r"with C 1 or 3, not \(12, 8, 8, 3\) \(channels last",
        ),
        ({"images": np.zeros((12, 1, 8, 8), np.float32)}, "images must be uint8"),
        ({"factor_names": np.array(["a", "b"], dtype=object)}, "cannot be read without unpickling"),
        ({"factor_sizes": np.array([3, 1])}, "factor 'shape' has fewer than 2 values: drop it"),
        ({"factor_sizes": np.array([3, 3])}, r"factor 'shape' has values outside 0..2"),
        ({"factors": np.zeros((11, 2), np.int64)}, "12 images but 11 rows of factors"),
        ({"factor_names": np.array(["a", "b", "c"])}, "2 factor columns, 3 names, 2 sizes"),
    ],
)
def test_a_malformed_npz_of_ones_own_is_one_line_naming_it(tmp_path, change, match):
    np.savez(tmp_path / "own.npz", **{**own_arrays(), **change})
    assert one_line_error(read_factor_npz, tmp_path / "own.npz", match=match).startswith(
        str(tmp_path)
    )


def test_an_npz_of_ones_own_names_what_it_lacks(tmp_path):
    arrays = own_arrays()
    del arrays["factor_sizes"]
    np.savez(tmp_path / "own.npz", **arrays)
    one_line_error(
        read_factor_npz,
        tmp_path / "own.npz",
        match="has no factor_sizes \\(it holds images, factors, factor_names\\)",
    )
