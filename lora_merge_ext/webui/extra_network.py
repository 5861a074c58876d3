"""The ``ljl`` extra network registered with the host, so ``<ljl:…>`` tags are claimed (and taken out
of the prompt text the text encoder sees) like ``<lora:…>``.

Its ``activate`` applies nothing by design: the host calls the extra networks in prompt order, and
the built-in ``lora`` handler clears ``networks.loaded_networks`` when it runs, so anything added
here could be wiped.  The tags are applied from the script hook ``after_extra_networks_activate``,
which the host calls after every extra network, for the first pass and the hires pass.  A pass run
without that hook (another extension's pass with a reduced script list, such as ADetailer's) would
drop the tags silently, so ``activate`` says so.
"""
from __future__ import annotations

from . import notify

HOOK_MARK = "is_ljl_hook"  # set on the AlwaysVisible script class (script_hook)


def hook_will_run(p) -> bool:
    """Whether this pass's script runner holds the script that applies the tags."""
    runner = getattr(p, "scripts", None)
    return any(getattr(s, HOOK_MARK, False) for s in getattr(runner, "alwayson_scripts", None) or ())


def make_extra_network():
    from modules import extra_networks

    class ExtraNetworkLjl(extra_networks.ExtraNetwork):
        def __init__(self):
            super().__init__("ljl")

        def activate(self, p, params_list):
            if params_list and not hook_will_run(p):
                notify.warn(p, "<ljl> tags skipped: this pass runs without the ljl_merge script (an extension "
                               "ran it with its own script list; add ljl_merge to that list)")

        def deactivate(self, p):
            pass

    return ExtraNetworkLjl()


def register_extra_network() -> None:
    from modules import extra_networks
    extra_networks.register_extra_network(make_extra_network())
