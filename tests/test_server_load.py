"""The server under load and at shutdown, over real HTTP.

- 200 concurrent streaming chat requests, 40 of which hang up midway: every other one
  gets exactly the text it gets when sent alone (greedy), the 40 are aborted and their
  KV blocks freed (read from /metrics), and after each wave the server's memory is back at
  its idle level before the load, but for the KV-cache blocks the load wrote into for the
  first time (resident pool pages, reused by later requests).
- SIGTERM: the server stops accepting, lets the in-flight stream finish, and exits 0.
"""

import asyncio
import signal
import socket
import time

import openai
import psutil
import pytest

import tiny_models as tm
from http_images import ImageServer, png_bytes
from server_proc import ServerProcess

N_REQUESTS, N_LEAVERS, MAX_TOKENS = 200, 40, 16


def _spec(i, urls):
    """Ten distinct prompts: text only, one image, two images."""
    k = i % 10
    images = [] if k < 3 else [urls[k % 4]] if k < 7 else [urls[k % 4], urls[(k + 1) % 4]]
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return [{"role": "user", "content": content + [{"type": "text", "text": f"Question {k}: what is shown?"}]}]


async def _one(client, messages, leave: bool):
    """Stream one request; a leaver closes its stream after 3 content chunks."""
    kw = dict(max_tokens=400, extra_body={"ignore_eos": True}) if leave else dict(max_tokens=MAX_TOKENS)
    stream = await client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True, **kw)
    text, seen = "", 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            seen += 1
            if leave and seen == 3:
                await stream.close()
                return None
    return text


async def _wave(url, urls):
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300) as client:
        jobs = [_one(client, _spec(i, urls), leave=i % (N_REQUESTS // N_LEAVERS) == 0) for i in range(N_REQUESTS)]
        return await asyncio.gather(*jobs)


def _wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_200_streams_with_40_disconnects(tiny_llava):
    with ImageServer() as images:
        urls = [images.add(f"/{i}.png", png_bytes(tm.make_image(20 + i))) for i in range(4)]
        server = ServerProcess.start(tiny_llava, "--model-name", "m", "--session-len", "512")
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            alone = {}
            for k in range(10):
                out = client.chat.completions.create(model="m", messages=_spec(k, urls), max_tokens=MAX_TOKENS,
                                                     temperature=0)
                alone[k] = out.choices[0].message.content
            proc = psutil.Process(server.proc.pid)
            idle = server.metrics()
            idle_rss = proc.memory_info().rss
            rss = []
            for wave in range(2):
                aborted_before = server.metrics()["seer_requests_aborted_total"]
                texts = asyncio.run(_wave(server.url, urls))
                for i, text in enumerate(texts):
                    if i % (N_REQUESTS // N_LEAVERS) == 0:
                        assert text is None
                    else:
                        assert text == alone[i % 10], f"request {i} (wave {wave}) differs from its run alone"
                _wait_for(lambda: server.metrics()["seer_num_requests_active"] == 0)
                m = server.metrics()
                assert m["seer_requests_aborted_total"] - aborted_before == N_LEAVERS
                assert m["seer_kv_cache_blocks_used"] == 0
                assert m["seer_num_requests_running"] == 0 and m["seer_num_requests_waiting"] == 0
                time.sleep(0.5)  # the engine hands freed memory back when it goes idle
                rss.append(proc.memory_info().rss)
            # Back to the idle level: what the process holds beyond it is the KV-cache blocks the
            # load wrote into for the first time (the pool's pages stay resident; they are reused).
            kv_pages = (m["seer_kv_cache_blocks_touched"] - idle["seer_kv_cache_blocks_touched"]) \
                * m["seer_kv_cache_block_bytes"]
            over_idle = (rss[1] - idle_rss - kv_pages) / 2**20
            print(f"server RSS idle {idle_rss / 2**20:.0f} MiB, after wave 1 {rss[0] / 2**20:.0f} MiB, after "
                  f"wave 2 {rss[1] / 2**20:.0f} MiB; KV blocks first written by the load {kv_pages / 2**20:.0f} MiB")
            assert over_idle < 48, f"the server holds {over_idle:.0f} MiB more than at idle, KV pool aside"
            growth = (rss[1] - rss[0]) / 2**20
            assert growth < 32, f"the server grew by {growth:.0f} MiB over a second identical wave"
        finally:
            assert server.stop() == 0, server.log()


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_llava):
    server = ServerProcess.start(tiny_llava, "--session-len", "2048", "--shutdown-timeout", "60")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    stream = client.chat.completions.create(model=tiny_llava, messages=[{"role": "user", "content": "go"}],
                                            max_tokens=800, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    server.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return False
        except OSError:
            return True

    _wait_for(refused, timeout=10)  # no longer accepting...
    assert server.proc.poll() is None  # ...but still finishing the stream
    rest = list(chunks)
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert [c.usage.completion_tokens for c in rest if c.usage][-1] == 800
    assert first is not None
    assert server.proc.wait(30) == 0, server.log()


@pytest.mark.parametrize("flags,words", [
    (["/no/such/model"], "not a folder"),
    (["--limit-mm-per-prompt", "audio=3"], "limit-mm-per-prompt"),
    (["--session-len", "3"], "session_len"),
])
def test_serve_refuses_bad_options_before_binding(tiny_llava, flags, words):
    import subprocess
    import sys

    args = flags if flags[0].startswith("/") else [tiny_llava, *flags]
    out = subprocess.run([sys.executable, "-m", "seer", "serve", *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and words in out.stderr, out.stderr
