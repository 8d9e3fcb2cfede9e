"""Hostile request bodies for the converter's route (POST /ipadapter/convert), as a shared workflow or a
stranger's script could send them: every malformed and looping graph of hostile_graphs.py, a
doubling Combine Params chain, a 3000-node chain, JSON nested 100k deep, a body over the size limit, another
content type. Each with the statuses the route may answer. Used by the soak (tests/test_soak.py), which posts
them to a real server while prompts run."""
from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass

from ipadapter_ext.ip_adapter_core.convert.limits import MAX_BYTES

from support.hostile_graphs import (
    API_MALFORMED,
    LOOPS,
    UI_MALFORMED,
    doubling_chain,
    edited_api_graph,
    edited_ui_graph,
    ui_chain,
)


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    content_type: str
    expect: frozenset  # the statuses that are a correct answer
    declared: int | None = None  # a Content-Length to declare instead of sending the body (a large upload)


def _wf(workflow) -> bytes:
    return json.dumps({"workflow": workflow}).encode()


def hostile_requests() -> list[Hostile]:
    out = [Hostile(f"loop: {n}", _wf(make()), "application/json", frozenset({400})) for n, (make, _) in LOOPS.items()]
    out += [Hostile(f"editor file: {n}", _wf(edited_ui_graph(edit)()), "application/json", frozenset({400}))
            for n, (edit, _) in UI_MALFORMED.items()]
    # (two cases need Python keys JSON cannot carry: a float key, the same id as int and string)
    out += [Hostile(f"API file: {n}", _wf(edited_api_graph(edit)), "application/json", frozenset({400}))
            for n, (edit, _) in API_MALFORMED.items() if n not in ("a key that is not an id", "the same id twice")]
    out += [Hostile("doubling Combine Params chain, 30 deep", _wf(doubling_chain(30)), "application/json",
                    frozenset({200})),  # converted where it can be; the capped chain stays, reported
            Hostile("3000-node chain", _wf(ui_chain(3000)), "application/json", frozenset({200})),
            Hostile("JSON nested 100k deep", b"[" * 100_000 + b"]" * 100_000, "application/json", frozenset({400})),
            Hostile("not JSON", b"\x00\xff{workflow", "application/json", frozenset({400})),
            Hostile("over the size limit", b"", "application/json", frozenset({413}), declared=MAX_BYTES + 1),
            Hostile("another content type", _wf({}), "text/plain", frozenset({415}))]
    return out


def post(url: str, h: Hostile, timeout: float = 120) -> tuple[int, float]:
    """(status, seconds) of one POST; an exception if the server does not answer within ``timeout``."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t = time.perf_counter()
    try:
        if h.declared is None:
            conn.request("POST", "/ipadapter/convert", body=h.body, headers={"Content-Type": h.content_type})
        else:
            conn.putrequest("POST", "/ipadapter/convert")
            conn.putheader("Content-Type", h.content_type)
            conn.putheader("Content-Length", str(h.declared))
            conn.endheaders()
        res = conn.getresponse()
        res.read()
        return res.status, time.perf_counter() - t
    finally:
        conn.close()
