"""``modules.options`` of the double: ``OptionInfo`` (a setting's description) and ``Options`` (the
store behind ``shared.opts``), as far as extensions meet them (reference §4.1, §11).

* ``opts.<key>`` reads the stored value, else the option's default;
* ``opts.set(key, value)`` stores a changed value and calls the option's ``onchange``;
* ``opts.add_option(key, info)`` registers an option and keeps a value already stored for the key
  (a saved config);
* ``opts.onchange(key, func, call=True)`` sets the change handler and, by default, calls it once.
"""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api
        self.category_id = category_id

    # the host's chainable decorations; the double keeps only the text where there is one
    def info(self, text):
        self.comment_after = f"{self.comment_after} ({text})"
        return self

    def link(self, label, url):
        return self

    def js(self, label, js_func):
        return self

    def html(self, html):
        return self

    def needs_restart(self):
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self, known=None):
        object.__setattr__(self, "data_labels", dict(known or {}))
        object.__setattr__(self, "data", {})

    def __getattr__(self, key):
        values = object.__getattribute__(self, "data")
        if key in values:
            return values[key]
        described = object.__getattribute__(self, "data_labels").get(key)
        if described is None:
            raise AttributeError(key)
        return described.default

    def __setattr__(self, key, value):
        self.set(key, value)

    def set(self, key, value, is_api=False, run_callbacks=True) -> bool:
        """Store `value`; False (and nothing called) when it equals the current value."""
        if key in self.data and self.data[key] == value:
            return False
        self.data[key] = value
        described = self.data_labels.get(key)
        if run_callbacks and described is not None and described.onchange is not None:
            described.onchange()
        return True

    def add_option(self, key, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def onchange(self, key, func, call=True) -> None:
        self.data_labels[key].onchange = func
        if call:
            func()
