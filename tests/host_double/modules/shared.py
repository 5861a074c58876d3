"""``modules.shared``: settings, command-line options and the loaded model (reference §2.4, §11)."""
from types import SimpleNamespace

from modules import options
from modules.options import OptionInfo, options_section  # noqa: F401

cmd_opts = SimpleNamespace(lora_dir=None, lyco_dir_backcompat=None, lowram=False, api=False, nowebui=False)

# Core settings the extension and the Lora double read (defaults as in the host).
options_templates = {
    "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
    "extra_networks_default_multiplier": OptionInfo(1.0, "Default multiplier for extra networks"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
    "hires_fix_use_firstpass_conds": OptionInfo(False, "For hires fix, calculate conds of second pass using extra networks of first pass"),
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo("none", "Disable all extensions"),
    "fp8_storage": OptionInfo("Disable", "FP8 weight"),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
    "emphasis": OptionInfo("Original", "Emphasis mode"),
    "sdxl_crop_top": OptionInfo(0, "crop top coordinate"),
    "sdxl_crop_left": OptionInfo(0, "crop left coordinate"),
}

opts = options.Options(options_templates)

sd_model = None
weight_load_location = "cpu"
state = SimpleNamespace(interrupted=False, skipped=False, job="", job_count=0)


def reload_options():
    """Fresh settings with the current templates (used by the harness between tests)."""
    global opts
    opts = options.Options(options_templates)
    return opts
