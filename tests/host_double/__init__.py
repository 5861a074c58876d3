"""A test double of the AUTOMATIC1111 WebUI (v1.9/v1.10), written from
the host facts (reference A1111_HOST_API.md), for driving this extension without the real WebUI.

This folder plays the WebUI root.  It holds

* ``modules/`` — the host modules the extension meets, with the real names and lifecycle:
  ``scripts`` (Script, AlwaysVisible, ScriptRunner, script loading with the extension folder on
  ``sys.path`` only while its file runs), ``script_callbacks`` (``before_ui`` run in reverse),
  ``extra_networks`` (the tag regex, ``ExtraNetworkParams``, activation order), ``processing``
  (``process_images``: per batch ``before_process_batch`` → extra-network activation →
  ``after_extra_networks_activate`` → conds through the class-level cond cache → sampling, then
  the hires pass), ``shared`` (opts, cmd_opts, sd_model), ``errors``, ``infotext_utils``,
  ``sd_models.read_state_dict`` (counts reads), ``hashes``, ``cache``, ``extensions``, ``api``;
* ``extensions-builtin/Lora/`` — the built-in Lora extension: ``network``, ``network_lora``,
  ``lyco_helpers``, ``networks`` (``load_networks`` clears ``loaded_networks`` every call; layers
  re-merge only when ``(name, te, unet, dyn)`` of the loaded nets changes), ``lora_patches``,
  ``extra_networks_lora`` and ``scripts/lora_script.py``;
* ``fake_model.py`` — a small torch "SD model" whose layers carry the real SD1.5 / SDXL layer names
  (built from tests/data/module_specs), run by the processing double;
* ``harness.py`` — ``start_host(...)`` loads all of it like the WebUI does and returns a ``Host``;
  ``fixtures.py`` has pytest fixtures built on it.

The driver, for other tests (the X/Y/Z double included)::

    host = start_host(tmp_path, family="sd1")           # Lora + this extension loaded
    res = host.txt2img("a cat <ljl:J:1,0>", seed=3)      # → modules.processing.Processed
    res.images[0].unet   # {layer name: output tensor} of the UNet layers (first pass)
    res.images[0].cond   # text-encoder layer outputs for the prompt (through the cond cache)
    res.images[0].hires  # UNet outputs of the hires pass (enable_hr=True), else None
    host.close()

or build a processing object yourself (``host.processing(prompt=…)``, a
``StableDiffusionProcessingTxt2Img`` wired to the txt2img ScriptRunner) and call
``modules.processing.process_images(p)``.
"""
import os

WEBUI_ROOT = os.path.dirname(os.path.abspath(__file__))
LORA_EXTENSION_DIR = os.path.join(WEBUI_ROOT, "extensions-builtin", "Lora")
