"""Image loading from every accepted source, and its error messages."""

import base64
import io
import pathlib
import time

import pytest
from PIL import Image

from seer.vl import IMAGE_TOKEN, ImageLoadError, image_hash, load_image
from seer.vl.constants import IMAGE_FETCH_TIMEOUT_ENV

from http_images import ImageServer, closed_port_url


def _png_bytes(color=(10, 20, 30), size=(8, 6), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()


@pytest.fixture(scope="module")
def image_server():
    with ImageServer() as srv:
        srv.add("/img.png", PNG)
        srv.add("/slow.png", PNG, delay=1.5)
        srv.add("/text", b"hello, not an image", ctype="text/plain")
        yield srv


@pytest.fixture(scope="module")
def server(image_server):
    return image_server.url("")


def test_image_token_matches_lmdeploy():
    assert IMAGE_TOKEN == "<IMAGE_TOKEN>"


def test_pil_image_is_returned_as_rgb():
    img = load_image(Image.new("L", (3, 2), 7))
    assert img.mode == "RGB" and img.size == (3, 2) and img.getpixel((0, 0)) == (7, 7, 7)
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert load_image(rgb).getpixel((1, 1)) == (1, 2, 3)


def test_transparency_becomes_white():
    img = load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_file_path_str_pathlib_and_file_url(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    for src in (str(path), path, pathlib.Path(str(path)), "file://" + str(path)):
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (10, 20, 30)


def test_raw_bytes_and_rgba_file_bytes():
    assert load_image(PNG).size == (8, 6)
    assert load_image(bytearray(PNG)).size == (8, 6)
    img = load_image(_png_bytes((0, 0, 0, 0), mode="RGBA"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_data_uri():
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert load_image(uri).getpixel((2, 2)) == (10, 20, 30)


def test_http_url(server, image_server):
    img = load_image(server + "/img.png")
    assert img.mode == "RGB" and img.size == (8, 6)
    assert image_server.agents and image_server.agents[-1]


def test_http_404(server):
    with pytest.raises(ValueError, match="404") as err:
        load_image(server + "/missing.png")
    assert "/missing.png" in str(err.value)


def test_http_timeout(server, monkeypatch):
    monkeypatch.setenv(IMAGE_FETCH_TIMEOUT_ENV, "0.2")
    start = time.monotonic()
    with pytest.raises(ValueError, match="timed out after 0.2s"):
        load_image(server + "/slow.png")
    assert time.monotonic() - start < 1.4


def test_http_not_an_image(server):
    with pytest.raises(ValueError, match="not a recognised image"):
        load_image(server + "/text")


def test_unreachable_url():
    with pytest.raises(ValueError, match="unreachable"):
        load_image(closed_port_url("/x.png"))


def test_invalid_timeout_setting(monkeypatch, server):
    monkeypatch.setenv(IMAGE_FETCH_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=IMAGE_FETCH_TIMEOUT_ENV):
        load_image(server + "/img.png")


def test_corrupt_and_truncated_bytes():
    with pytest.raises(ValueError, match="not a recognised image"):
        load_image(b"definitely not an image")
    with pytest.raises(ValueError):
        load_image(PNG[: len(PNG) // 2])
    big = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(big, format="JPEG")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(big.getvalue()[:400])
    with pytest.raises(ValueError, match="no data"):
        load_image(b"")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist") as err:
        load_image(str(tmp_path / "nope.png"))
    assert "nope.png" in str(err.value)
    with pytest.raises(ValueError, match="not a regular file"):
        load_image(tmp_path)


def test_bad_data_uris_are_truncated_in_messages():
    with pytest.raises(ValueError, match="malformed"):
        load_image("data:text/plain,hello")
    long_bad = "data:image/png;base64," + "!" * 5000
    with pytest.raises(ValueError, match="invalid base64") as err:
        load_image(long_bad)
    assert len(str(err.value)) < 400 and "5022 chars" in str(err.value)
    corrupt = "data:image/png;base64," + base64.b64encode(b"junk" * 100).decode()
    with pytest.raises(ValueError, match="not a recognised image"):
        load_image(corrupt)


def test_unsupported_types():
    for src in (42, None, {"url": "x"}, ""):
        with pytest.raises(ValueError, match="accepted"):
            load_image(src)


def test_image_hash():
    a = Image.new("RGB", (4, 4), (1, 2, 3))
    b = Image.new("RGB", (4, 4), (1, 2, 3))
    assert image_hash(a) == image_hash(b) == image_hash(a.copy())
    assert image_hash(load_image(PNG)) == image_hash(load_image(PNG))
    b.putpixel((0, 0), (1, 2, 4))
    assert image_hash(a) != image_hash(b)
    assert image_hash(Image.new("RGB", (2, 8), (1, 2, 3))) != image_hash(Image.new("RGB", (8, 2), (1, 2, 3)))
    assert image_hash(Image.new("L", (4, 4), 1)) != image_hash(Image.new("P", (4, 4), 1))
    with pytest.raises(ValueError):
        image_hash(b"bytes")
