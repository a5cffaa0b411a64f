"""Hostile image and video sources: local files only where the operator allowed them, checked on
the path that is opened; fetches bounded in time and bytes; images bounded in pixels before
decoding; over real HTTP, a bad source is a 400 for its own request and slow hosts stall no one."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import sys
import time

import httpx
import pytest

import tiny_models as tm
from hostile_host import HostileHost, huge_png
from http_images import png_bytes
from seer.vl import ImageLoadError, MediaPolicy, load_image
from seer.vl.video import load_video
from server_proc import ServerProcess

PNG = png_bytes(tm.make_image(1, (32, 24)))


@pytest.fixture(scope="module")
def host():
    with HostileHost(PNG) as h:
        yield h


@pytest.mark.parametrize("behaviour,reason", [
    ("trickle_body", "timed out after 2s"), ("trickle_headers", "timed out after 2s"), ("stall", "timed out"),
    ("bad_status", "bad response"), ("many_headers", "bad response"), ("long_header", "bad response"),
    ("huge_length", "over the limit"), ("endless", "grew past the limit"), ("redirect_loop", "redirects"),
])
def test_a_hostile_host_fails_its_image_within_the_deadline(host, behaviour, reason):
    policy = MediaPolicy(timeout=2.0, max_bytes=1 << 20)
    t = time.monotonic()
    with pytest.raises(ImageLoadError, match=reason):
        load_image(host.url(behaviour), policy)
    assert time.monotonic() - t < 3.5


def test_a_good_host_still_serves(host):
    assert load_image(host.url("good"), MediaPolicy(timeout=2.0)).size == (32, 24)


def test_images_over_the_pixel_budget_are_refused_before_decoding():
    bomb = huge_png(13000, 13000)  # 13000 x 13000 pixels in a few hundred bytes
    t = time.monotonic()
    with pytest.raises(ImageLoadError, match="13000x13000 pixels, over the limit of 67108864"):
        load_image(bomb)
    assert time.monotonic() - t < 1.0
    with pytest.raises(ImageLoadError, match="over the limit of 100 pixels"):
        load_image(PNG, MediaPolicy(max_pixels=100))
    with pytest.raises(ImageLoadError, match="over the limit of 64 bytes"):
        load_image(PNG, MediaPolicy(max_bytes=64))


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """``allowed/ok.png``, ``secret/secret.png`` beside it, ``allowed/link.png`` -> the secret; cwd = tmp_path."""
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "ok.png").write_bytes(PNG)
    (secret / "secret.png").write_bytes(PNG)
    os.symlink(secret / "secret.png", allowed / "link.png")
    monkeypatch.chdir(tmp_path)
    return allowed, secret


def test_no_local_file_is_read_without_an_allowed_folder(folders):
    allowed, _ = folders
    policy = MediaPolicy(local_root=None)
    messages = []
    for src in (str(allowed / "ok.png"), "/etc/passwd", "/no/such/file.png", f"file://{allowed}/ok.png"):
        with pytest.raises(ImageLoadError, match="local files are not allowed") as e:
            load_image(src, policy)
        messages.append(str(e.value).split(": ", 1)[1])
    assert len(set(messages)) == 1  # nothing says whether the file exists, or its size


@pytest.mark.parametrize("src", [
    "file://{tmp}/allowed/%2e%2e/secret/secret.png", "{tmp}/allowed/..%2fsecret/secret.png",
    "file://{tmp}/allowed/..%2fsecret/secret.png", " {tmp}/secret/secret.png", "FILE://{tmp}/secret/secret.png",
    "allowed/../secret/secret.png", "{tmp}/allowed/link.png", "file://localhost{tmp}/secret/secret.png",
])
def test_the_allowed_folder_cannot_be_escaped(folders, tmp_path, src):
    policy = MediaPolicy(local_root="allowed")  # relative, as an operator may give it
    with pytest.raises(ImageLoadError, match="(only below|does not exist)"):
        load_image(src.format(tmp=tmp_path), policy)


@pytest.mark.parametrize("src", ["allowed/ok.png", " {tmp}/allowed/ok.png", "FILE://{tmp}/allowed/ok.png",
                                 "file://{tmp}/allowed/%6fk.png"])
def test_files_in_the_allowed_folder_load_however_they_are_spelt(folders, tmp_path, src):
    assert load_image(src.format(tmp=tmp_path), MediaPolicy(local_root="allowed")).size == (32, 24)


def test_video_sources_follow_the_same_policy(folders, host, monkeypatch):
    allowed, secret = folders
    with pytest.raises(ValueError, match="local files are not allowed"):
        load_video(str(secret / "secret.png"), policy=MediaPolicy(local_root=None))
    monkeypatch.setitem(sys.modules, "av", None)  # no PyAV: the policy still answers first
    with pytest.raises(ValueError, match="local files are not allowed"):
        load_video(str(secret / "secret.png"), policy=MediaPolicy(local_root=None))
    with pytest.raises(ValueError, match="needs PyAV"):
        load_video(str(allowed / "ok.png"), policy=MediaPolicy(local_root=str(allowed)))
    monkeypatch.delitem(sys.modules, "av")
    with pytest.raises(ValueError, match="only below"):
        load_video([str(secret / "secret.png")], policy=MediaPolicy(local_root=str(allowed)))
    with pytest.raises(ValueError, match="timed out"):
        load_video(host.url("trickle_body"), policy=MediaPolicy(timeout=1.0))


# ---- over HTTP ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_llava, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "ok.png").write_bytes(PNG)
    env_timeout = os.environ.get("SEER_IMAGE_FETCH_TIMEOUT")
    os.environ["SEER_IMAGE_FETCH_TIMEOUT"] = "3"
    try:
        srv = ServerProcess.start(tiny_llava, "--limit-mm-per-prompt", "image=2", "--max-queued-requests", "64",
                                  "--max-image-pixels", "1000000")
    finally:
        if env_timeout is None:
            os.environ.pop("SEER_IMAGE_FETCH_TIMEOUT")
        else:
            os.environ["SEER_IMAGE_FETCH_TIMEOUT"] = env_timeout
    yield srv
    srv.stop()


def _chat(server, parts, timeout=30.0, **extra):
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 4, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=timeout)


def _err(r) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    return r.json()["error"]["message"]


def test_image_data_parts_read_no_local_file_and_count_as_images(server, tiny_llava):
    target = os.path.join(tiny_llava, "config.json")
    msg = _err(_chat(server, [{"type": "image_data", "image_data": {"data": target}}, "hi"]))
    assert "local files are not allowed" in msg and "bytes" not in msg
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    three = [{"type": "image_data", "image_data": {"data": data_uri}}] * 3
    assert "--limit-mm-per-prompt" in _err(_chat(server, three + [{"type": "text", "text": "hi"}]))
    assert _chat(server, three[:2] + [{"type": "text", "text": "hi"}]).status_code == 200


def test_a_bomb_image_is_a_400_by_the_pixel_flag(server):
    uri = "data:image/png;base64," + base64.b64encode(huge_png(2000, 2000)).decode()
    assert "over the limit of 1000000 pixels" in _err(_chat(server, [{"type": "image_url",
                                                                      "image_url": {"url": uri}}]))


def test_slow_image_hosts_stall_no_one(server, host):
    """20 requests whose images trickle in (more than the media workers) while a text-only chat
    runs: the chat answers at once, each image request ends with a 400 near the 3 s deadline."""
    slow = [{"type": "image_url", "image_url": {"url": host.url("trickle_body")}}, "what is this?"]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        t0 = time.monotonic()
        futures = [pool.submit(_chat, server, slow) for _ in range(20)]
        time.sleep(0.5)
        t = time.monotonic()
        text = _chat(server, "hello there")
        text_seconds = time.monotonic() - t
        metrics = httpx.get(f"{server.url}/metrics").text  # the fetching requests count as queued
        queued = float(next(ln.split()[-1] for ln in metrics.splitlines()
                            if ln.startswith("seer_num_requests_queued ")))
        results = [f.result() for f in futures]
        total = time.monotonic() - t0
    assert text.status_code == 200 and text_seconds < 2.0, text_seconds
    assert queued >= 15, queued
    assert all("timed out after 3s" in _err(r) for r in results)
    assert total < 12


def test_sequences_not_requests_count_against_the_queue_bound(server):
    body = {"prompt": [f"prompt {i}" for i in range(5)], "n": 13, "max_tokens": 2}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 503 and "this request adds 65" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/completions", json={**body, "n": 12}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 60


def test_one_bad_image_fails_only_its_own_request(server, host):
    good = [{"type": "text", "text": "hello there"}]
    bad = [{"type": "image_url", "image_url": {"url": host.url("bad_status")}}, "hi"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_chat, server, p) for p in (good, bad, good)]
        a, b, c = [f.result() for f in futures]
    assert a.status_code == c.status_code == 200 and "bad response" in _err(b)
