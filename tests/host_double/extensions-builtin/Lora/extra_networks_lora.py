"""Built-in Lora double, ``extra_networks_lora``: the handler of ``<lora:NAME:TE:UNET:DYN>`` tags
(reference §2.6).

Per tag: NAME is the first positional item; te = the second positional item (else 1.0), replaced
by ``te=``; unet = the third positional item (else te), replaced by ``unet=``; dyn = the fourth
positional item as an int (else None), replaced by ``dyn=``; other named items are ignored.  All
tags are read before anything is loaded, so a malformed one (``float('MIDD')``) raises before
``networks.load_networks`` runs.  The ``sd_lora`` setting adds its LoRA to every prompt.  With
``lora_add_hashes_to_infotext``, the short hashes of the loaded files go to "Lora hashes",
collected in ``p.lora_hashes`` (kept from the first pass into the hires pass).
``errors`` (network name → failed layers) is reported by ``deactivate`` as a comment and then
reset (when the host resets it is not in the reference).
"""
import networks
from modules import extra_networks, shared

_NOT_IN_NAMES = str.maketrans("", "", ":,")


def _read_tag(params):
    """(name, te, unet, dyn) of one tag; ValueError for a non-numeric value."""
    pos, named = params.positional, params.named
    te = float(pos[1]) if len(pos) > 1 else 1.0
    if "te" in named:
        te = float(named["te"])
    unet = float(pos[2]) if len(pos) > 2 else te
    if "unet" in named:
        unet = float(named["unet"])
    dyn = int(pos[3]) if len(pos) > 3 else None
    if "dyn" in named:
        dyn = int(named["dyn"])
    return pos[0], te, unet, dyn


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.errors = {}

    def activate(self, p, params_list):
        params_list = list(params_list)
        always = shared.opts.sd_lora
        if always != "None" and always in networks.available_networks \
                and all(params.items[0] != always for params in params_list):
            weight = shared.opts.extra_networks_default_multiplier
            p.all_prompts = [f"{prompt}<lora:{always}:{weight}>" for prompt in p.all_prompts]
            params_list.append(extra_networks.ExtraNetworkParams(items=[always, weight]))
        tags = [_read_tag(params) for params in params_list]
        names, tes, unets, dyns = (list(column) for column in zip(*tags)) if tags else ([], [], [], [])
        networks.load_networks(names, tes, unets, dyns)
        if shared.opts.lora_add_hashes_to_infotext:
            self._record_hashes(p)

    @staticmethod
    def _record_hashes(p):
        if not getattr(p, "is_hr_pass", False) or not hasattr(p, "lora_hashes"):
            p.lora_hashes = {}
        for net in networks.loaded_networks:
            shorthash = net.network_on_disk.shorthash
            if shorthash and net.mentioned_name:
                p.lora_hashes[net.mentioned_name.translate(_NOT_IN_NAMES)] = shorthash
        if p.lora_hashes:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in p.lora_hashes.items())

    def deactivate(self, p):
        if self.errors:
            p.comment("Networks with errors: " + ", ".join(f"{name} ({count})" for name, count in self.errors.items()))
        self.errors = {}
