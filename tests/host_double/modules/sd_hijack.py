"""``modules.sd_hijack``: only the ``model_hijack.comments`` list the Lora extension writes to."""
from types import SimpleNamespace

model_hijack = SimpleNamespace(comments=[], extra_generation_params={})
