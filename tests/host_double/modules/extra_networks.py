"""``modules.extra_networks`` of the double: ``<type:arg:arg…>`` prompt tags and the registry of their
handlers (reference §3).

* A tag is ``<`` + a word-character type name + ``:`` + anything up to the first ``>``; its items
  are that text split on every ``:``.  ``parse_prompt`` cuts every tag out of the prompt (known type
  or not) and returns the items by type, types in order of first appearance.  ``parse_prompts``
  cleans every prompt but returns the tag data of the first one only.
* ``ExtraNetworkParams(items)``: a string item with exactly one ``=`` goes to ``named``, every other
  item (non-strings included) to ``positional``; nothing is stripped; two params are equal when
  their items are.
* ``activate(p, data)``: the handlers of the types in `data` first (prompt order, an unknown type
  is skipped), then ``activate(p, [])`` for every registered handler that did not activate
  successfully above — so a handler that raised on its tags is called again with ``[]`` — and
  finally ``p.scripts.after_extra_networks_activate``.  An exception in a handler is displayed and
  the others still run.  ``deactivate(p, data)`` calls every registered handler's ``deactivate``,
  mentioned ones first.
"""
import logging
import re

from modules import errors

extra_network_registry = {}
extra_network_aliases = {}

TAG = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = list(items) if items else []
        self.positional = []
        self.named = {}
        for item in self.items:
            if isinstance(item, str) and item.count("=") == 1:
                key, value = item.split("=")
                self.named[key] = value
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __repr__(self):
        return f"ExtraNetworkParams({self.items!r})"


class ExtraNetwork:
    """Base class of a tag handler.  The host's contract: ``activate`` runs on every generation pass,
    with an empty list when the type is not in the prompt (the handler must then undo its effect);
    it may run several times before ``deactivate``, each call replacing what the previous one did."""

    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


class _Hypernetwork(ExtraNetwork):
    """The host's built-in ``hypernet`` type; it has nothing to do in the double."""

    def __init__(self):
        super().__init__("hypernet")

    def activate(self, p, params_list):
        pass

    def deactivate(self, p):
        pass


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


def register_default_extra_networks():
    register_extra_network(_Hypernetwork())


def lookup_extra_networks(extra_network_data) -> dict:
    """handler → the params of every type it answers (by name, else by alias); unknown types dropped."""
    found = {}
    for type_name, params in extra_network_data.items():
        handler = extra_network_registry.get(type_name) or extra_network_aliases.get(type_name)
        if handler is None:
            logging.getLogger(__name__).info("Skipping unknown extra network: %s", type_name)
            continue
        found.setdefault(handler, []).extend(params)
    return found


def _call(task: str, method, *args) -> bool:
    try:
        method(*args)
        return True
    except Exception as exc:
        errors.display(exc, task)
        return False


def activate(p, extra_network_data):
    done = set()
    for handler, params in lookup_extra_networks(extra_network_data).items():
        if _call(f"activating extra network {handler.name} with arguments {params}", handler.activate, p, params):
            done.add(id(handler))
    for name, handler in extra_network_registry.items():
        if id(handler) not in done:
            _call(f"activating extra network {name}", handler.activate, p, [])
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    mentioned = list(lookup_extra_networks(extra_network_data))
    others = [h for h in extra_network_registry.values() if h not in mentioned]
    for handler in mentioned + others:
        _call(f"deactivating extra network {handler.name}", handler.deactivate, p)


def parse_prompt(prompt: str):
    """(prompt without tags, {type: [ExtraNetworkParams, …]})."""
    found = {}

    def take(match):
        found.setdefault(match.group(1), []).append(ExtraNetworkParams(match.group(2).split(":")))
        return ""

    return TAG.sub(take, prompt), found


def parse_prompts(prompts):
    cleaned, first = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        cleaned.append(text)
        if first is None:
            first = data
    return cleaned, first if first is not None else {}
