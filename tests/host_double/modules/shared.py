"""``modules.shared`` of the double: settings (``opts``), command-line options (``cmd_opts``) and the
loaded model (``sd_model``, set by the harness).

Only the core settings that the Lora double, the processing double or this project read are
declared here, with the host's defaults (reference §11); the Lora extension adds its own settings
when its ``lora_script.py`` runs.
"""
from types import SimpleNamespace

from modules.options import OptionInfo, Options

cmd_opts = SimpleNamespace(lora_dir=None, lyco_dir_backcompat=None, lowram=False, api=False, nowebui=False,
                           api_auth=None)

opts = Options()
for _key, _default, _label in (
        ("persistent_cond_cache", True, "Persistent cond cache"),
        ("extra_networks_default_multiplier", 1.0, "Default multiplier for extra networks"),
        ("CLIP_stop_at_last_layers", 1, "Clip skip"),
        ("disable_all_extensions", "none", "Disable all extensions"),
        ("fp8_storage", "Disable", "FP8 weight"),
        ("cache_fp16_weight", False, "Cache FP16 weight for LoRA"),
        ("emphasis", "Original", "Emphasis mode")):
    opts.add_option(_key, OptionInfo(_default, _label))

sd_model = None
weight_load_location = "cpu"   # "cpu" unless --lowram (reference §2.4)
