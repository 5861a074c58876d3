"""The ``ljl`` extra network registered with the host, so ``<ljl:…>`` tags are claimed (and taken out
of the prompt text the text encoder sees) like ``<lora:…>``.

Its ``activate`` does nothing by design: the host calls the extra networks in prompt order, and the
built-in ``lora`` handler clears ``networks.loaded_networks`` when it runs, so anything added here
could be wiped.  The tags are applied from the script hook ``after_extra_networks_activate``, which
the host calls after every extra network, for the first pass and the hires pass.
"""


def make_extra_network():
    from modules import extra_networks

    class ExtraNetworkLjl(extra_networks.ExtraNetwork):
        def __init__(self):
            super().__init__("ljl")

        def activate(self, p, params_list):
            pass

        def deactivate(self, p):
            pass

    return ExtraNetworkLjl()


def register_extra_network() -> None:
    from modules import extra_networks
    extra_networks.register_extra_network(make_extra_network())
