"""The HTTP side of `vitsam serve`: Starlette routes onto `vitsam.serve.app.App` (the API is listed there).

    from vitsam.serve import create_app
    app = create_app(model, variables, "sam")      # an ASGI app: uvicorn.run(app, host="127.0.0.1", port=8000)

Request bodies are read with a size limit (413 beyond it, from Content-Length before reading, or while
streaming); model work runs in Starlette's thread pool, so the event loop keeps answering other tabs.
"""

from __future__ import annotations

import json

from vitsam.serve.app import PAGE, App, example_image, png_bytes
from vitsam.serve.uploads import BadUpload, decode_image

_JSON_LIMIT = 64 << 10  # prompt bodies are small


def create_app(model, variables: dict, kind: str, **options):
    """A Starlette app serving the page and the API for one model; `options` go to `App` (class_names,
    cache_images, max_upload_bytes, max_pixels, source)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    state = App(model, variables, kind, **options)

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadUpload(413, f"the upload is {int(declared):,} bytes, more than the server's limit of {limit:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadUpload(413, f"the upload is more than the server's limit of {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> dict:
        data = await read_body(request, _JSON_LIMIT)
        if not data:
            return {}
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadUpload(400, f"the request body is not JSON: {e}") from None

    def handler(work):
        """An endpoint: `work(request)` is a coroutine returning a dict (JSON) or a Response; BadUpload and a
        bad prompt become {"error": message} with their status."""

        async def endpoint(request: Request):
            try:
                result = await work(request)
            except BadUpload as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except ValueError as e:  # a prompt the model's checks refused
                return JSONResponse({"error": str(e)}, status_code=400)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    async def page(request):
        return FileResponse(PAGE / "index.html")

    async def script(request):
        return FileResponse(PAGE / "app.js", media_type="text/javascript")

    async def info(request):
        return state.info()

    async def upload(request):
        data = await read_body(request, state.max_upload_bytes)
        image = await run_in_threadpool(decode_image, data, state.max_pixels)
        name = request.query_params.get("name", "image").replace("\\", "/").rsplit("/", 1)[-1][:200] or "image"
        return await run_in_threadpool(state.add_image, image, name)

    async def example(request):
        name = request.path_params["name"]
        image = example_image(name)
        return await run_in_threadpool(state.add_image, image, name + ".png")

    async def image_png(request):
        entry = state.entry(request.path_params["image"])
        return Response(await run_in_threadpool(png_bytes, entry.image), media_type="image/png")

    async def result_png(request):
        p = request.path_params
        if not p["index"].isdigit():
            raise BadUpload(404, f"no mask {p['index']!r}")
        data = await run_in_threadpool(state.mask_png, p["image"], p["result"], p["index"])
        return Response(data, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="mask_{p["index"]}.png"'})

    def on_image(method):
        async def work(request):
            body = await read_json(request)
            return await run_in_threadpool(method, request.path_params["image"], body)

        return work

    async def annotations(request):
        record = await run_in_threadpool(state.annotations, request.path_params["image"])
        name = record["image"]["file_name"].rsplit(".", 1)[0] or "image"
        return JSONResponse(record, headers={"Content-Disposition": f'attachment; filename="{_safe(name)}.json"'})

    async def reset(request):
        return state.reset(request.path_params["image"])

    routes = [
        Route("/", handler(page)),
        Route("/app.js", handler(script)),
        Route("/api/info", handler(info)),
        Route("/api/images", handler(upload), methods=["POST"]),
        Route("/api/examples/{name}", handler(example), methods=["POST"]),
        Route("/api/images/{image}/image.png", handler(image_png)),
        Route("/api/images/{image}/predict", handler(on_image(state.predict)), methods=["POST"]),
        Route("/api/images/{image}/results/{result}/{index}.png", handler(result_png)),
        Route("/api/images/{image}/keep", handler(on_image(state.keep)), methods=["POST"]),
        Route("/api/images/{image}/everything", handler(on_image(state.everything)), methods=["POST"]),
        Route("/api/images/{image}/annotations.json", handler(annotations)),
        Route("/api/images/{image}/reset", handler(reset), methods=["POST"]),
    ]
    async def not_found(request, exc):
        return JSONResponse({"error": f"no such page or API route: {request.url.path}"}, status_code=404)

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.vitsam = state
    return app


def _safe(name: str) -> str:
    """A file name for Content-Disposition: letters, digits, '-', '_' and '.' only, not starting with '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100].lstrip(".") or "image"


def create_app_for_checkpoint(checkpoint, **options):
    """`create_app` for any checkpoint `vitsam.convert.load_model` reads (official .pth, converted folders,
    trainer workdirs); a ViT's class names come from its model.json."""
    from pathlib import Path

    from vitsam.checkpoint import read_model_spec
    from vitsam.convert import load_model

    model, variables, kind = load_model(checkpoint)
    spec = Path(checkpoint, "model.json")
    if kind == "vit" and "class_names" not in options and spec.is_file():
        options["class_names"] = read_model_spec(spec).get("class_names")
    return create_app(model, variables, kind, source=str(checkpoint), **options)
