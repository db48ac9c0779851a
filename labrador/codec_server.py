"""The Temporal Web UI's remote codec endpoint: POST /encode and POST /decode (aiohttp).

The UI sends `{"payloads": [...]}` (the protobuf JSON form of temporal.api.common.v1.Payloads) from
the operator's browser and shows what comes back. Whoever reaches this server can decrypt every
payload it is shown: bind it to loopback (the default) or put it behind the operators' auth (an
authenticating reverse proxy); it has none of its own. CORS answers only the configured UI origins.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_UI_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")
MAX_BODY = 16 * 1024 * 1024
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(codec: PayloadCodec, ui_origins: Sequence[str] = DEFAULT_UI_ORIGINS) -> web.Application:
    origins = {o.rstrip("/") for o in ui_origins}

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        if origin is not None and origin.rstrip("/") in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Vary"] = "Origin"
        return response

    def endpoint(transform: Callable[[Payloads], Awaitable[Payloads]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payloads = json_format.Parse(await request.text(), Payloads())
            except (json_format.ParseError, ValueError) as exc:
                return web.json_response({"error": f"body is not a Payloads JSON object: {exc}"}, status=400)
            try:
                result = await transform(payloads)
            except ValueError as exc:  # CodecError: unknown key, tampered payload
                return web.json_response({"error": str(exc)}, status=400)
            return web.Response(text=json_format.MessageToJson(result), content_type="application/json")

        return handle

    async def encode(payloads: Payloads) -> Payloads:
        return Payloads(payloads=await codec.encode(list(payloads.payloads)))

    async def decode(payloads: Payloads) -> Payloads:
        return Payloads(payloads=await codec.decode(list(payloads.payloads)))

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(text=json.dumps({"ok": True}), content_type="application/json")

    app = web.Application(middlewares=[cors], client_max_size=MAX_BODY)
    for prefix in ("", "/{namespace}"):  # the CLI's --codec-endpoint may template the namespace in
        app.router.add_post(f"{prefix}/encode", endpoint(encode))
        app.router.add_post(f"{prefix}/decode", endpoint(decode))
    app.router.add_get("/healthz", health)
    app.router.add_route("OPTIONS", "/{tail:.*}", health)
    return app


async def start(
    codec: PayloadCodec, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
    ui_origins: Sequence[str] = DEFAULT_UI_ORIGINS,
) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (call `cleanup()` to stop) and the bound port."""
    runner = web.AppRunner(build_app(codec, ui_origins), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound
