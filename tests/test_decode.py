import numpy as np
import pytest
from PIL import Image

from vinspect.data import load_rgb, open_image
from vinspect.errors import ImageDecodeError


def test_grey_rgba_palette_16bit_cmyk_become_rgb(tmp_path):
    grey = Image.fromarray(np.full((10, 12), 77, np.uint8), "L")
    grey.save(tmp_path / "g.png")
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(tmp_path / "w16.png")
    Image.fromarray(np.full((10, 12), 257 * 40, np.uint16)).save(tmp_path / "d16.tif")
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    Image.fromarray(np.full((10, 12), 3, np.uint8), "L").convert("P").save(tmp_path / "p.bmp")

    g = np.asarray(open_image(tmp_path / "g.png"))
    assert g.shape == (10, 12, 3) and g.dtype == np.uint8 and (g == 77).all()
    a = np.asarray(open_image(tmp_path / "a.png"))
    assert tuple(a[0, 0]) == (200, 0, 0) and tuple(a[0, -1]) == (255, 255, 255)  # alpha on white
    assert (np.asarray(open_image(tmp_path / "w16.png")) == 255).all()  # 16-bit full scale -> 255
    assert (np.asarray(open_image(tmp_path / "d16.tif")) == 40).all()
    c = np.asarray(open_image(tmp_path / "c.jpg")).astype(int)
    assert c[..., 0].mean() > 200 and c[..., 1].mean() < 60 and c[..., 2].mean() < 60
    assert (np.asarray(open_image(tmp_path / "p.bmp")) == 3).all()


def test_jpeg_with_corrupt_data_is_refused(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    img.save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    third = len(data) // 3
    (tmp_path / "zeroed.jpg").write_bytes(data[:third] + bytes(500) + data[third + 500:])
    assert open_image(tmp_path / "ok.jpg").size == (96, 96)
    with pytest.raises(ImageDecodeError, match="corrupt"):
        open_image(tmp_path / "zeroed.jpg")


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"hello, not an image", "not a recognised image")])
def test_undecodable_files_name_the_reason(tmp_path, content, reason):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError) as e:
        open_image(p)
    assert reason in e.value.reason and e.value.path == str(p)


def test_truncated_jpeg_is_refused_not_silently_grey(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    img.save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(tmp_path / "cut.jpg")


def test_squash_and_letterbox(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (130, 320, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "long.png")
    sq = load_rgb(tmp_path / "long.png", 64, "bilinear", "squash")
    lb = load_rgb(tmp_path / "long.png", 64, "bilinear", "letterbox")
    assert sq.shape == lb.shape == (64, 64, 3)
    assert sq.std(axis=1).min() > 10  # squash: content in every row
    # letterbox keeps the 320:130 aspect: about 26 rows of content, the rest is constant padding
    flat = (lb.std(axis=1) < 1e-6).all(axis=1)
    assert flat[:15].all() and flat[-15:].all()
    assert 24 <= (~flat).sum() <= 28
