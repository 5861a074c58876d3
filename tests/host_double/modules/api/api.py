"""``modules.api.api``: ``POST /sdapi/v1/txt2img`` (reference §10).  The prompt goes through the normal
pipeline; AlwaysVisible scripts run with their ui() defaults unless ``alwayson_scripts`` names them;
``script_name`` picks a selectable script by lower-cased title.

A double "image" travels as base64 of a safetensors blob of its layer outputs
(``"stage/layer name"`` → tensor); tests/host_double/api_codec.py reads it back.
"""
from __future__ import annotations

import base64
import threading

import safetensors.torch
from fastapi import FastAPI, HTTPException

from modules import processing, scripts


def encode_image(image) -> str:
    tensors = {f"{stage}/{name}": t.contiguous() for (stage, name), t in image.layers().items()}
    return base64.b64encode(safetensors.torch.save(tensors)).decode("ascii")


class Api:
    def __init__(self, app: FastAPI, queue_lock: threading.Lock | None = None):
        self.app = app
        self.queue_lock = queue_lock or threading.Lock()
        app.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"])

    def init_script_args(self, runner, request: dict):
        args = runner.default_args()
        name = request.get("script_name")
        if name:
            titles = [s.title().lower() for s in runner.selectable_scripts]
            if name.lower() not in titles:
                raise HTTPException(status_code=422, detail=f"Script '{name}' not found")
            index = titles.index(name.lower())
            script = runner.selectable_scripts[index]
            args[0] = index + 1
            given = request.get("script_args") or []
            args[script.args_from:script.args_from + len(given)] = given
        for title, spec in (request.get("alwayson_scripts") or {}).items():
            for script in runner.alwayson_scripts:
                if script.title().lower() == title.lower():
                    given = spec.get("args", [])
                    args[script.args_from:script.args_from + len(given)] = given
        return args

    def text2imgapi(self, request: dict):
        runner = scripts.scripts_txt2img
        script_args = self.init_script_args(runner, request)
        fields = {k: v for k, v in request.items() if k not in ("script_name", "script_args", "alwayson_scripts")}
        with self.queue_lock:
            p = processing.StableDiffusionProcessingTxt2Img(**fields)
            p.scripts = runner
            p.script_args = tuple(script_args)
            processed = runner.run(p, *p.script_args) if script_args[0] else None
            if processed is None:
                processed = processing.process_images(p)
        images = [encode_image(im) for im in getattr(processed, "images", [])]
        return {"images": images, "parameters": request, "info": processed.info if hasattr(processed, "info") else ""}
