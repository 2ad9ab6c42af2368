"""A bulk endpoint that acknowledges instantly: the worker's own ceiling, store excluded.

Speaks just enough of the OpenSearch API for the sink (``GET /``, template
PUTs, ``POST /_bulk`` answering ``errors: false`` with one item per action, in
the compact form OpenSearch gives the sink's ``filter_path``). Run:
``python bench/null_store.py PORT``; prints ``ready`` when listening.
"""

from __future__ import annotations

import sys

from aiohttp import web

INFO = {
    "name": "null-store",
    "version": {"distribution": "opensearch", "number": "2.19.0"},
    "tagline": "The OpenSearch Project: https://opensearch.org/",
}


async def root(request: web.Request) -> web.Response:
    return web.json_response(INFO)


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"acknowledged": True})


async def bulk(request: web.Request) -> web.Response:
    body = await request.read()
    n = body.count(b"\n") // 2
    # The request's action (index, or create for a data stream), as OpenSearch names it.
    action = body[2 : body.find(b'"', 2)] if body.startswith(b'{"') else b"index"
    item = b'{"' + action + b'":{"status":201}}'
    payload = b'{"errors":false,"items":[' + b",".join([item] * n) + b"]}"
    return web.Response(body=payload, content_type="application/json")


def main() -> None:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/", root)
    app.router.add_put("/{tail:.*}", ok)
    app.router.add_post("/_bulk", bulk)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
