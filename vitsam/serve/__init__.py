"""`vitsam serve`: interactive segmentation (SAM) and classification (ViT) in the browser, on your own machine
and weights. `create_app` builds the ASGI app (Starlette; run it with uvicorn), `vitsam.serve.app` holds the
state and the HTTP API's handlers, `vitsam.serve.page` the page."""

from vitsam.serve.web import create_app, create_app_for_checkpoint

__all__ = ["create_app", "create_app_for_checkpoint"]
