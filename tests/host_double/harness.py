"""Start the test-double WebUI the way the host starts: settings, extension list, script loading,
model load callbacks, extra-network registry, ``before_ui`` callbacks, script runners.

``start_host(lora_dir, family="sd1", rows=…)`` returns a ``Host``; call ``close()`` when done (it runs
the ``script_unloaded`` callbacks, which undo the Lora extension's torch patches, and forgets every
host module so the next start is fresh).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import LORA_EXTENSION_DIR, WEBUI_ROOT

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
SPEC_DIR = Path(PROJECT_ROOT) / "tests" / "data" / "module_specs"
HOST_MODULES = ("networks", "network", "network_lora", "lyco_helpers", "lora_patches", "extra_networks_lora",
                "fake_model")


def _forget_host_modules():
    for name in list(sys.modules):
        if name == "modules" or name.startswith("modules.") or name in HOST_MODULES:
            del sys.modules[name]
        elif name.startswith("lora_merge_ext.webui"):
            del sys.modules[name]


def spec_rows(spec: str, keep=None) -> list[list]:
    rows = json.loads((SPEC_DIR / f"{spec}.json").read_text())
    return [r for r in rows if keep is None or keep(r[0])]


class Host:
    def __init__(self, saved_path):
        self._saved_path = saved_path
        self.closed = False
        from modules import extra_networks, processing, scripts, shared
        self.shared = shared
        self.scripts = scripts
        self.processing_module = processing
        self.extra_networks = extra_networks

    @property
    def opts(self):
        return self.shared.opts

    @property
    def sd_model(self):
        return self.shared.sd_model

    @property
    def networks(self):
        return sys.modules.get("networks")

    @property
    def lora_dir(self) -> Path:
        return Path(self.shared.cmd_opts.lora_dir)

    def processing(self, **kwargs):
        """A txt2img processing object wired to the txt2img ScriptRunner with its default script args."""
        p = self.processing_module.StableDiffusionProcessingTxt2Img(**kwargs)
        p.scripts = self.scripts.scripts_txt2img
        p.script_args = tuple(self.scripts.scripts_txt2img.default_args())
        return p

    def img2img_processing(self, **kwargs):
        """An img2img processing object wired to the img2img ScriptRunner with its default script args."""
        p = self.processing_module.StableDiffusionProcessingImg2Img(**kwargs)
        p.scripts = self.scripts.scripts_img2img
        p.script_args = tuple(self.scripts.scripts_img2img.default_args())
        return p

    def img2img(self, prompt: str, seed: int = 1, **kwargs):
        """Run one img2img generation (the double ignores init images); returns Processed."""
        return self.processing_module.process_images(self.img2img_processing(prompt=prompt, seed=seed, **kwargs))

    def txt2img(self, prompt: str, seed: int = 1, **kwargs):
        """Run one generation; returns modules.processing.Processed (images of layer outputs)."""
        return self.processing_module.process_images(self.processing(prompt=prompt, seed=seed, **kwargs))

    def paste(self, infotext: str) -> dict:
        """The params "PNG Info" / "Send to txt2img" would apply (infotext_pasted callbacks included)."""
        from modules import infotext_utils
        return infotext_utils.parse_generation_parameters(infotext)

    def txt2img_from_params(self, params: dict):
        kwargs = dict(prompt=params["Prompt"], negative_prompt=params.get("Negative prompt", ""),
                      seed=int(params["Seed"]), steps=int(params.get("Steps", 20)))
        if "Hires upscale" in params:
            kwargs.update(enable_hr=True, hr_prompt=params.get("Hires prompt") or "")
        return self.processing_module.process_images(self.processing(**kwargs))

    def refresh_loras(self):
        self.networks.list_available_networks()

    def api_client(self):
        """A TestClient for a FastAPI app with the host's API routes and every app_started callback."""
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from modules import script_callbacks
        from modules.api.api import Api
        app = FastAPI()
        Api(app)
        script_callbacks.app_started_callback(None, app)
        return TestClient(app)

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            from modules import script_callbacks
            script_callbacks.script_unloaded_callback()
        finally:
            sys.path[:] = self._saved_path
            _forget_host_modules()


def start_host(lora_dir, family: str = "sd1", rows=None, spec: str | None = None, keep=None,
               lora_enabled: bool = True, with_extension: bool = True, root_scripts=(), settings=None) -> Host:
    """Start the double with the built-in Lora extension and this project as an installed extension."""
    _forget_host_modules()
    saved_path = list(sys.path)
    sys.path.insert(0, WEBUI_ROOT)
    try:
        from modules import extensions, script_callbacks, scripts, shared
        shared.cmd_opts.lora_dir = str(lora_dir)
        os.makedirs(lora_dir, exist_ok=True)
        for key, value in (settings or {}).items():
            shared.opts.data[key] = value
        extensions.extensions[:] = [
            extensions.Extension("Lora", LORA_EXTENSION_DIR, enabled=lora_enabled, is_builtin=True),
            extensions.Extension(os.path.basename(PROJECT_ROOT), PROJECT_ROOT, enabled=with_extension),
        ]
        scripts.load_scripts(root_scripts)
        from fake_model import FakeSdModel
        if rows is None:
            rows = spec_rows(spec or ("sd15_lora" if family == "sd1" else "sdxl_lora"), keep)
        shared.sd_model = FakeSdModel(family, rows)
        from modules import sd_hijack
        sd_hijack.model_hijack.embedding_db.expected_shape = 768 if family == "sd1" else 768 + 1280
        script_callbacks.model_loaded_callback(shared.sd_model)
        from modules import extra_networks
        extra_networks.initialize()
        extra_networks.register_default_extra_networks()
        script_callbacks.before_ui_callback()
        runners = scripts.create_script_runners()
        for runner in runners:
            runner.setup_ui()
        return Host(saved_path)
    except BaseException:
        try:
            from modules import script_callbacks
            script_callbacks.script_unloaded_callback()
        finally:
            sys.path[:] = saved_path
            _forget_host_modules()
        raise
