"""The editor's route to the converter (nodes/routes.py) is bounded (issue 19, item 3).

- In an aiohttp app of its own (no ComfyUI server): a body that is not application/json gets 415, one over
  MAX_BYTES 413 (declared, or streamed without a length), malformed JSON or workflows 400 with the reason, a
  conversion past TIME_LIMIT_S 503; each refusal is one log line with the ids repr()-quoted; another route
  answers while a conversion runs (the conversion is held until that answer came, so the order is certain).
- In the real ComfyUI server (the session's SD1.5 server): /system_stats answers while a conversion of a
  large legal graph is in flight, and the 415 / 413 refusals come through ComfyUI's middlewares.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
import urllib.parse

import pytest

from ipadapter_ext.bench.convert_scale import BUILD, UIGraph
from ipadapter_ext.ip_adapter_core.convert.limits import MAX_BYTES

pytestmark = pytest.mark.host


@pytest.fixture
def routes():
    from ipadapter_ext.nodes import routes

    return routes


def small_workflow() -> dict:
    g = UIGraph()
    g.core()
    g.link(g.advanced(10, (300, 0), 1), 0, 4, 0, "MODEL")
    return g.workflow()


def serve(routes, scenario):
    """Run ``scenario(client)`` against an app with the convert route and a /ping route."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def ping(request):
        return web.json_response({"pong": True})

    async def main():
        app = web.Application()
        app.router.add_post(routes.CONVERT, routes.convert_workflow)
        app.router.add_get("/ping", ping)
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


def post(routes, data: bytes, content_type="application/json"):
    async def scenario(client):
        res = await client.post(routes.CONVERT, data=data, headers={"Content-Type": content_type})
        return res.status, await res.json()
    return serve(routes, scenario)


def refusals(caplog) -> list:
    return [r for r in caplog.records if r.name == "ipadapter.convert" and r.levelno == logging.WARNING]


def test_the_route_converts(routes):
    status, body = post(routes, json.dumps({"workflow": small_workflow()}).encode())
    assert status == 200 and body["report"]["complete"], body
    assert "IPAApply" in {n["type"] for n in body["workflow"]["nodes"]}


def test_a_body_that_is_not_json_gets_415(routes, caplog):
    status, body = post(routes, json.dumps({"workflow": small_workflow()}).encode(), content_type="text/plain")
    assert status == 415 and "application/json" in body["error"] and "'text/plain'" in body["error"], body
    assert len(refusals(caplog)) == 1


def test_a_body_over_the_limit_gets_413_declared_or_streamed(routes, monkeypatch, caplog):
    monkeypatch.setattr(routes, "MAX_BYTES", 1000)
    data = json.dumps({"workflow": small_workflow()}).encode()
    assert len(data) > 1000
    status, body = post(routes, data)
    assert status == 413 and f"{len(data):,} bytes" in body["error"], body

    async def streamed(client):     # no Content-Length: read with the cap
        async def chunks():
            for k in range(0, len(data), 100):
                yield data[k:k + 100]
        res = await client.post(routes.CONVERT, data=chunks(), headers={"Content-Type": "application/json"})
        return res.status, await res.json()

    status, body = serve(routes, streamed)
    assert status == 413 and "more than 1,000 bytes" in body["error"], body
    assert len(refusals(caplog)) == 2


@pytest.mark.parametrize("case", ["not json", "nested 100k deep", "no workflow", "origin slot 10^9", "loop",
                                  "unknown family"])
def test_malformed_requests_get_400_with_the_reason(routes, case, caplog):
    wf = small_workflow()
    if case == "origin slot 10^9":
        wf["links"][-1][1:3] = [3, 10 ** 9]
    if case == "loop":
        wf["nodes"].append({"id": 50, "type": "Reroute", "inputs": [{"name": "", "link": 90}],
                            "outputs": [{"name": "", "links": [90]}]})
        wf["links"].append([90, 50, 0, 50, 0, "*"])
    data, reason = {
        "not json": (b"{workflow", "could not be parsed"),
        "nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, "could not be parsed"),
        "no workflow": (b"[1, 2]", "'workflow' object"),
        "origin slot 10^9": (json.dumps({"workflow": wf}).encode(), "link 4: origin_slot 1000000000"),
        "loop": (json.dumps({"workflow": wf}).encode(), "loop: #50 (Reroute)"),
        "unknown family": (json.dumps({"workflow": wf, "family": "sd3"}).encode(), "family"),
    }[case]
    status, body = post(routes, data)
    assert status == 400 and reason in body["error"], body
    assert len(refusals(caplog)) == 1


def test_each_refusal_is_one_log_line_with_ids_quoted(routes, caplog):
    """A node id that carries a line break cannot forge a second log line."""
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
           "2\nIP-Adapter: forged line": {"class_type": "IPAdapterAdvanced", "inputs": {"model": ["1", -1]}}}
    status, body = post(routes, json.dumps({"workflow": api}).encode())
    assert status == 400
    [record] = refusals(caplog)
    line = record.getMessage()
    assert "\n" not in line and "400" in line and "forged line" in line, line


def test_a_conversion_past_the_time_limit_gets_503(routes, monkeypatch):
    real = routes.convert
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(10)             # held until the route has answered
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "convert", slow)
    monkeypatch.setattr(routes, "TIME_LIMIT_S", 0.2)
    try:
        status, body = post(routes, json.dumps({"workflow": small_workflow()}).encode())
    finally:
        release.set()
    assert status == 503 and "longer than 0.2 s" in body["error"], body


def test_other_routes_answer_while_a_conversion_runs(routes, monkeypatch):
    """The conversion is held (a test hook around convert) until /ping has answered: run on the event loop,
    the conversion would block /ping, and the hold would end only by its timeout, with /ping after it."""
    real, started, release = routes.convert, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "convert", held)

    async def scenario(client):
        job = asyncio.ensure_future(client.post(routes.CONVERT, data=json.dumps({"workflow": small_workflow()}),
                                                headers={"Content-Type": "application/json"}))
        while not started.is_set():
            await asyncio.sleep(0.01)
        pong = await client.get("/ping")
        in_flight = not release.is_set() and not job.done()
        release.set()
        res = await job
        return pong.status, in_flight, res.status

    try:
        assert serve(routes, scenario) == (200, True, 200)
    finally:
        release.set()


# ---------------------------------------------------------------------------- the real server

@pytest.mark.slow
def test_the_server_answers_while_it_converts_a_large_graph(servers):
    """A legal graph near the limits (5,000 of their nodes, ~20,000 nodes made, a few seconds of conversion):
    /system_stats answers while the conversion request is still in flight."""
    server = servers.get("sd15")
    data = json.dumps({"workflow": BUILD["stack"](5000)}).encode()
    assert len(data) < MAX_BYTES
    answer = {}

    def convert_request():
        with urllib_post(server.url, "/ipadapter/convert", data) as res:
            answer["status"] = res.status

    job = threading.Thread(target=convert_request)
    job.start()
    time.sleep(1.0)                 # the request is in, the conversion under way (it takes several seconds)
    stats = server.get("/system_stats", timeout=60)
    in_flight = job.is_alive()
    job.join(120)
    assert "system" in stats and in_flight and answer == {"status": 200}, (in_flight, answer)


@pytest.mark.slow
def test_the_server_refuses_wrong_types_and_large_bodies(servers):
    server = servers.get("sd15")
    host = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.request("POST", "/ipadapter/convert", body=b"{}", headers={"Content-Type": "text/plain"})
    res = conn.getresponse()
    assert res.status == 415 and "application/json" in json.loads(res.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.putrequest("POST", "/ipadapter/convert")      # a declared length over the limit, and no body sent
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BYTES + 1))
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and f"{MAX_BYTES + 1:,} bytes" in json.loads(res.read())["error"]
    conn.close()
    assert server.alive()


def urllib_post(url: str, path: str, data: bytes):
    import urllib.request

    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=120)
