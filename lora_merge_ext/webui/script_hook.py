"""The AlwaysVisible script (no UI) whose hooks apply ``<ljl:…>`` tags; the class is made inside a
function so this package never imports WebUI modules at import time."""


def make_script_class():
    from modules import scripts

    from . import activation, notify, xyz_axes
    from .extra_network import HOOK_MARK

    class LjlScript(scripts.Script):
        def title(self):
            return "LoRA join tags (ljl)"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            return []

        def before_process(self, p, *args):
            for problem in xyz_axes.finish_edits(p):  # the X/Y/Z axes' values, on the cell's final prompt
                notify.warn(p, problem)

        def process(self, p, *args):
            p.ljl_reported = set()
            p.ljl_hashes = {}

        def after_extra_networks_activate(self, p, *args, **kwargs):
            activation.activate(p, kwargs.get("extra_network_data"))

        def postprocess_batch(self, p, *args, **kwargs):
            activation.name_layer_errors_by_tag()  # before the host's deactivate reports them

    setattr(LjlScript, HOOK_MARK, True)
    return LjlScript
