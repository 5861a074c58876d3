"""The WebUI host adapter: the only code that imports AUTOMATIC1111 modules, and only inside functions.

* ``register`` — what the entry script wires (callbacks, the ``ljl`` extra network, the script);
* ``host_lora`` — the built-in Lora extension's modules, imported by their top-level names;
* ``lookup`` — LoRA names resolved like ``<lora:…>`` (alias or file name);
* ``tag_request`` — one ``<ljl:…>`` tag's items read into a request;
* ``file_cache`` — LoRA files read once per (path, mtime, size), bounded;
* ``layer_match`` / ``network_build`` — a host ``Network`` whose modules carry Σ and lbw;
* ``activation`` — per generation pass: tags → networks appended to ``networks.loaded_networks``;
* ``runtime_state`` — what is kept between passes (files, host modules, networks, hashes);
* ``extra_network`` / ``script_hook`` — the host classes, made inside functions;
* ``notify`` — bad tags reported in the console and the UI; ``infotext`` — "LJL hashes".
"""
