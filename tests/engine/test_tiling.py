"""Tile geometry and blending weights: coverage, weights summing to one, reflect reads."""

import numpy as np
import pytest

from napari_rrim_sr.engine.tiling import TileGrid, axis_starts, axis_weights, read_window, reflect_indices
from napari_rrim_sr.errors import InputError


@pytest.mark.parametrize(
    "length,tile,overlap,margin",
    [(517, 96, 16, 8), (389, 64, 8, 4), (100, 256, 16, 8), (33, 16, 4, 2), (1000, 250, 0, 0)],
)
def test_axis_starts_cover_the_extended_range(length, tile, overlap, margin):
    starts = axis_starts(length, tile, overlap, margin)
    assert starts[0] == -margin
    if tile >= length + 2 * margin:
        assert starts == [-margin]
        return
    assert starts[-1] + tile == length + margin
    gaps = np.diff(starts)
    assert (gaps > 0).all()
    assert (tile - gaps >= overlap).all()  # every neighbour pair shares >= overlap pixels


@pytest.mark.parametrize("blend", ["cosine", "linear"])
@pytest.mark.parametrize("scale", [1, 4])
def test_weights_sum_to_one_and_fade_out_at_inner_edges(blend, scale):
    starts = tuple(axis_starts(300, 64, 16, 8))
    tile = 64
    ws = axis_weights(starts, tile, scale, blend)
    lo = starts[0] * scale
    total = np.zeros((starts[-1] + tile) * scale - lo)
    for s, w in zip(starts, ws):
        assert w.shape == (tile * scale,)
        assert (w >= 0).all() and (w <= 1 + 1e-6).all()
        total[s * scale - lo : s * scale - lo + tile * scale] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # inner edges: the first/last overlap//4 input pixels get no weight (unreliable output)
    dead = 16 // 4 * scale
    assert (ws[1][:dead] == 0).all() and (ws[0][-dead:] == 0).all()
    # the outer image borders keep full weight
    assert ws[0][0] == pytest.approx(1.0) and ws[-1][-1] == pytest.approx(1.0)


def test_cosine_and_linear_differ():
    starts = tuple(axis_starts(200, 64, 16, 0))
    c = axis_weights(starts, 64, 1, "cosine")[1]
    l_ = axis_weights(starts, 64, 1, "linear")[1]
    assert not np.allclose(c, l_)
    with pytest.raises(InputError, match="blend"):
        axis_weights(starts, 64, 1, "gaussian")


def test_grid_shrinks_tiles_instead_of_wasting_overlap():
    # 512 px + 2*8 margin with tiles of at most 256: three tiles are needed; full 256 px tiles
    # would compute 768/528 = 1.45x the pixels along the axis, shrunk ones about 1.06x
    g = TileGrid.make(512, 512, 256, 16, 8, 4)
    assert g.tile_h <= 256
    assert len(g.ys) == 3
    computed = len(g.ys) * g.tile_h
    assert computed / (512 + 16) < 1.1
    assert g.n_tiles == 9
    tiles = list(g)
    assert len(tiles) == 9 and tiles[0].y0 == -8 and tiles[-1].y1 == 512 + 8


def test_grid_single_tile_and_size_multiple():
    g = TileGrid.make(37, 53, 0, 16, 8, 4, multiple=8)
    assert g.n_tiles == 1
    assert g.tile_h % 8 == 0 and g.tile_w % 8 == 0
    assert g.tile_h >= 37 + 16 and g.tile_w >= 53 + 16
    with pytest.raises(InputError, match="overlap"):
        TileGrid.make(300, 300, 20, 16, 8, 4)


@pytest.mark.parametrize("length", [1, 2, 5, 17])
def test_reflect_indices_match_numpy_pad(length):
    pad = 3 * length + 4  # further than one reflection
    ref = np.pad(np.arange(length), pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    np.testing.assert_array_equal(reflect_indices(-pad, length + pad, length), ref)


def test_read_window_equals_padded_slice_and_copies():
    rng = np.random.default_rng(0)
    plane = rng.random((2, 13, 9)).astype(np.float32)
    padded = np.pad(plane, ((0, 0), (20, 20), (20, 20)), mode="reflect")
    for y0, x0, h, w in [(-5, -3, 10, 8), (8, 4, 12, 11), (2, 1, 5, 5), (-20, -20, 53, 49)]:
        win = read_window(plane, y0, y0 + h, x0, x0 + w)
        np.testing.assert_array_equal(win, padded[:, y0 + 20 : y0 + 20 + h, x0 + 20 : x0 + 20 + w])
        assert not np.shares_memory(win, plane)


def test_blended_tiles_reconstruct_a_local_operator_exactly():
    """Stitching per-tile results with the weights reproduces the whole-image result for a
    pointwise operator (here x -> 4x4 nearest upsampling of x**2): the weights are exact."""
    rng = np.random.default_rng(1)
    img = rng.random((45, 38)).astype(np.float32)
    s = 4
    g = TileGrid.make(45, 38, 16, 6, 3, s)
    ext_h = (g.ys[-1] + g.tile_h - g.ys[0]) * s
    ext_w = (g.xs[-1] + g.tile_w - g.xs[0]) * s
    acc = np.zeros((ext_h, ext_w), np.float32)
    rw, cw = g.row_weights(), g.col_weights()
    for t in g:
        win = read_window(img, t.y0, t.y1, t.x0, t.x1) ** 2
        up = np.repeat(np.repeat(win, s, 0), s, 1) * rw[t.row][:, None] * cw[t.col][None, :]
        y, x = (t.y0 - g.ys[0]) * s, (t.x0 - g.xs[0]) * s
        acc[y : y + g.tile_h * s, x : x + g.tile_w * s] += up
    m = g.margin * s
    got = acc[m : m + 45 * s, m : m + 38 * s]
    want = np.repeat(np.repeat(img**2, s, 0), s, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
