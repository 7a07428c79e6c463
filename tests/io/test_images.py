"""Image files: dtype/axes/pixel size kept, provenance written, nothing ever overwritten."""

from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.errors import InputError, OutputError
from napari_rrim_sr.io.images import read_image, write_image

DATA = Path(__file__).parents[3] / "shared" / "data"
PROV = {"model": {"model_id": "tiny", "weights_sha256": "ab" * 32}, "scale": 4}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.mark.parametrize(
    "name,arr",
    [
        ("gray8.png", np.arange(35 * 21, dtype=np.uint32).reshape(35, 21).astype(np.uint8)),
        ("gray16.png", (np.arange(35 * 21, dtype=np.uint32).reshape(35, 21) * 97).astype(np.uint16)),
        ("rgb.png", np.random.default_rng(0).integers(0, 255, (17, 19, 3), dtype=np.uint8)),
        ("rgba.png", np.random.default_rng(1).integers(0, 255, (17, 19, 4), dtype=np.uint8)),
        ("stack16.tif", np.random.default_rng(2).integers(0, 4095, (3, 17, 19), dtype=np.uint16)),
        ("float.tif", np.random.default_rng(3).random((17, 19)).astype(np.float32)),
        ("signed.tif", np.random.default_rng(4).integers(-3000, 3000, (17, 19)).astype(np.int16)),
        ("rgb16.tif", np.random.default_rng(5).integers(0, 65535, (17, 19, 3), dtype=np.uint16)),
        ("rgb16.png", np.random.default_rng(8).integers(0, 65535, (17, 19, 3), dtype=np.uint16)),
        ("rgba16.png", np.random.default_rng(9).integers(0, 65535, (17, 19, 4), dtype=np.uint16)),
    ],
)
def test_round_trip_keeps_dtype_values_and_provenance(tmp_path, name, arr):
    p = write_image(tmp_path / name, arr, metadata=PROV)
    back, info = read_image(p)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)
    assert info["provenance"] == PROV
    assert info["rgb"] == (arr.ndim == 3 and arr.shape[-1] in (3, 4) and name != "stack16.tif")


def _png48(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG written byte by byte (zlib + CRCs), independent of the code under test."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = arr.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"pHYs", struct.pack(">IIB", 3937, 3937, 1))  # 100 dpi
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16bit_rgb_png_is_read_at_full_depth_and_written_back_with_dpi(tmp_path):
    # pillow alone returns the high byte only: values 7 and 263 (0x0107) would both read as 0/1
    arr = (np.arange(5 * 6 * 3, dtype=np.uint32).reshape(5, 6, 3) * 911 + 7).astype(np.uint16)
    _png48(tmp_path / "in.png", arr)
    back, info = read_image(tmp_path / "in.png")
    assert back.dtype == np.uint16 and info["rgb"] and not info["warnings"]
    np.testing.assert_array_equal(back, arr)
    assert info["dpi"] == pytest.approx((100, 100), abs=0.01)
    out = write_image(tmp_path / "out.png", back * 2, like=info, metadata=PROV, scale=4)
    again, info2 = read_image(out)
    np.testing.assert_array_equal(again, back * 2)
    assert info2["provenance"] == PROV
    assert info2["dpi"] == pytest.approx((400, 400), abs=0.01)  # 4x the pixels per inch
    assert info2["pixel_size"] == pytest.approx((info["pixel_size"][0] / 4, info["pixel_size"][1] / 4), rel=1e-4)


@pytest.mark.parametrize("compression", ["zstd", "jpeg", "lzw"])
def test_compressed_tiffs_are_read(tmp_path, compression):
    """Microscopy and slide exports often use codecs tifffile decodes only through imagecodecs."""
    import tifffile

    arr = np.random.default_rng(10).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", arr, photometric="rgb", compression=compression)
    back, info = read_image(tmp_path / "c.tif")
    assert back.shape == arr.shape and back.dtype == np.uint8 and info["rgb"]
    if compression == "jpeg":
        assert np.abs(back.astype(int) - arr).mean() < 60  # lossy, but decoded
    else:
        np.testing.assert_array_equal(back, arr)


def test_jpeg_comment_provenance(tmp_path):
    arr = np.random.default_rng(6).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    p = write_image(tmp_path / "x.jpg", arr, metadata=PROV)
    back, info = read_image(p)
    assert back.shape == arr.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - arr).mean() < 40  # lossy, but the same picture
    assert info["provenance"] == PROV


def test_stack_axes_and_scaled_pixel_size_survive(tmp_path):
    import tifffile

    arr = np.random.default_rng(7).integers(0, 255, (4, 12, 10), dtype=np.uint8)
    src = tmp_path / "ome.ome.tif"
    tifffile.imwrite(
        src,
        arr,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.2,
            "PhysicalSizeY": 0.3,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    a, info = read_image(src)
    assert info["axes"] == "ZYX" and info["spatial_axes"] == (1, 2)
    assert info["pixel_size"] == pytest.approx((0.3, 0.2)) and info["unit"] == "µm"
    out = write_image(tmp_path / "up.tif", a, like=info, scale=4, metadata=PROV)
    b, info2 = read_image(out)
    assert info2["axes"] == "ZYX"
    assert info2["pixel_size"] == pytest.approx((0.075, 0.05)) and info2["unit"] == "µm"
    with tifffile.TiffFile(out) as tf:  # resolution tags for other readers: px per cm
        xres = tf.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(1e4 / 0.05, rel=1e-4)


def test_real_microscopy_and_satellite_files(tmp_path):
    a, info = read_image(need(DATA / "microscopy" / "stardist_samples" / "img2d.tif"))
    assert a.dtype == np.uint16 and a.shape == (512, 512) and info["axes"] == "YX"
    b, info = read_image(need(DATA / "microscopy" / "bioimage_notebooks" / "IXMtest_A02_s9.tif"))
    assert b.shape == (3, 395, 695) and info["axes"] == "CYX" and not info["rgb"]
    c, info = read_image(need(DATA / "microscopy" / "bioimage_notebooks" / "hela-cells.tif"))
    assert info["rgb"] and info["unit"] == "µm" and info["pixel_size"][0] == pytest.approx(0.0515, rel=1e-2)
    naip = sorted(need(DATA / "satellite" / "opengeos_naip").glob("*.tif"))[0]
    d, info = read_image(naip)
    assert d.shape[-1] == 4 and not info["rgb"] and info["axes"] == "YXC"  # RGB+NIR bands, not RGBA
    assert any("4 bands" in w for w in info["warnings"])
    out = write_image(tmp_path / "naip.tif", d[:20, :30], like=info, scale=4)
    _, info2 = read_image(out)
    geo = {code: v for code, _, v in info2["geotags"]}
    orig = {code: v for code, _, v in info["geotags"]}
    assert geo[33550][0] == pytest.approx(orig[33550][0] / 4)  # ground pixel size / 4
    assert geo[33922] == orig[33922]  # same tie point: still georeferenced


def test_never_overwrites(tmp_path):
    arr = np.zeros((8, 8), np.uint8)
    p = tmp_path / "a.png"
    write_image(p, arr)
    before = p.read_bytes()
    with pytest.raises(OutputError, match="exists"):  # an output problem, not an input one
        write_image(p, arr + 1)
    assert p.read_bytes() == before
    write_image(p, arr + 1, overwrite=True)
    assert read_image(p)[0].max() == 1
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp files left


def test_refuses_to_write_over_the_input(tmp_path):
    arr = np.zeros((8, 8), np.uint16)
    src = write_image(tmp_path / "in.tif", arr)
    a, info = read_image(src)
    before = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is an input"):
            write_image(tmp_path / "." / "in.tif", a + 5, like=info, overwrite=overwrite)
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    "name,arr,match",
    [
        ("x.png", np.zeros((4, 4), np.float32), "tif"),
        ("x.jpg", np.zeros((4, 4), np.uint16), "JPEG"),
        ("x.png", np.zeros((2, 4, 5), np.uint8), "shape"),
        ("x.bmp", np.zeros((4, 4), np.uint8), "unsupported"),
        ("x.tif", np.zeros((0, 4), np.uint8), "empty"),
        ("x.tif", np.zeros((4, 4), bool), "dtype"),
    ],
)
def test_write_errors(tmp_path, name, arr, match):
    with pytest.raises(InputError, match=match):
        write_image(tmp_path / name, arr)
    assert not (tmp_path / name).exists()


def test_unreadable_files(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png: cannot read"):
        read_image(bad)
    trunc = tmp_path / "trunc.tif"
    write_image(trunc, np.zeros((64, 64), np.uint16))
    trunc.write_bytes(trunc.read_bytes()[:100])
    with pytest.raises(InputError, match="trunc.tif"):
        read_image(trunc)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


# -- issue 13: one decoder for the CLI, the reader and training ----------------------------------


def test_decoder_gray_alpha_is_rgba_with_alpha_kept(tmp_path):
    from PIL import Image

    from napari_rrim_sr.io.images import as_planes, decode_image

    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    alpha = np.full((4, 5), 128, np.uint8)
    p = tmp_path / "la.png"
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(p)
    arr, info = decode_image(p)
    assert arr.shape == (4, 5, 4) and info["rgb"]
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray)
    np.testing.assert_array_equal(arr[..., 3], alpha)  # alpha stays alpha
    planes, color = as_planes(arr, info)
    assert color and planes.shape == (1, 4, 5, 4)


def test_decoder_planes_for_stacks_planar_rgb_and_gray_alpha_tiffs(tmp_path):
    import tifffile

    from napari_rrim_sr.io.images import as_planes, decode_image

    planar = np.random.default_rng(0).integers(0, 255, (3, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    arr, info = decode_image(tmp_path / "p.tif")
    assert info["stored_axes"] == "SYX" and info["stored_shape"] == (3, 6, 7) and info["axes"] == "YXS"
    np.testing.assert_array_equal(np.transpose(planar, info["stored_order"]), arr)
    planes, color = as_planes(arr, info)
    assert color and planes.shape == (1, 6, 7, 3)
    stack = np.zeros((2, 3, 6, 7), np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZCYX"})
    planes, color = as_planes(*decode_image(tmp_path / "s.tif"))
    assert not color and planes.shape == (6, 6, 7, 1)
    ga = np.zeros((6, 7, 2), np.uint8)
    ga[..., 0] = 9
    tifffile.imwrite(tmp_path / "ga.tif", ga, photometric="minisblack", extrasamples=["unassalpha"])
    planes, color = as_planes(*decode_image(tmp_path / "ga.tif"))
    assert not color and planes.shape == (1, 6, 7, 1) and planes.max() == 9  # gray, alpha dropped


def test_decoder_keeps_16_bit_gray_png(tmp_path):
    from PIL import Image

    from napari_rrim_sr.io.images import decode_image

    a = np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    arr, _ = decode_image(p)
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, a)


def test_apply_axes_reads_letters_against_the_stored_order():
    from napari_rrim_sr.io.images import apply_axes

    arr = np.zeros((6, 7, 3), np.uint8)
    info = {"stored_axes": "SYX", "stored_shape": (3, 6, 7), "stored_order": (1, 2, 0)}
    assert apply_axes(arr, info, "CYX")[1:] == ("YXC", (0, 1), False)
    assert apply_axes(arr, info, "SYX")[1:] == ("YXS", (0, 1), True)
    two = np.zeros((2, 6, 7), np.uint8)
    out, axes, _, rgb = apply_axes(two, {}, "SYX")  # 2 samples: bands, moved last
    assert out.shape == (6, 7, 2) and axes == "YXC" and not rgb
    for bad, word in (("YX", "stores 3"), ("YYX", "exactly once"), ("ZZX", "exactly once"), ("Y1X", "letter")):
        with pytest.raises(InputError, match=word):
            apply_axes(arr, info, bad)
