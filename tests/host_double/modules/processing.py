"""``modules.processing`` of the double: a generation, as far as scripts, extra networks and the cond
cache are concerned (reference §3.3, §4.2).

``process_images(p)``: ``before_process`` hooks, then ``p.override_settings`` applied (and put back
afterwards), ``process`` hooks, and per batch of ``batch_size`` images:

1. ``before_process_batch`` hooks;
2. the batch's positive prompts are parsed for extra networks (negative prompts are not);
3. ``extra_networks.activate`` (which ends with the ``after_extra_networks_activate`` hooks), unless
   ``p.disable_extra_networks``;
4. ``process_batch`` hooks, then the conds: negative and positive prompts through the text-encoder
   layers of ``shared.sd_model``, reused from the class-level cond cache when the cache key
   (cleaned prompts, steps, clip skip, checkpoint, extra-network data, size, FP8 / fp16-cache
   settings, emphasis) is unchanged — the cache is kept across generations while
   ``persistent_cond_cache`` is on;
5. "sampling": the UNet layers run once per image; with ``enable_hr`` the hires pass follows
   (``before_hr`` hooks, activation of the hires prompt's extra networks, hires conds, the UNet
   layers again);
6. ``postprocess_batch`` hooks and one infotext per image.

After the batches: ``extra_networks.deactivate`` when the prompt had tags, ``postprocess`` hooks.
Each image is a ``FakeImage`` of layer outputs.  ``StableDiffusionProcessingImg2Img`` runs the same
batches with no hires pass and, as in the host, no hires cond caches of its own (the init images
are not used).  Not modelled: the hires-pass reuse of first-pass conds,
``hires_fix_use_firstpass_conds``, low-VRAM ordering, masks and init latents.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from modules import extra_networks, infotext_utils, sd_hijack, shared


@dataclass
class FakeImage:
    """One generated "image": {layer name: output} for the text encoder on the prompt (``cond``) and
    the negative prompt (``uncond``), the UNet on the first pass and on the hires pass (or None)."""
    cond: dict
    uncond: dict
    unet: dict
    hires: dict | None = None
    info: str = ""

    def layers(self) -> dict:
        """Every output, keyed by (stage, layer name)."""
        stages = {"cond": self.cond, "uncond": self.uncond, "unet": self.unet, "hires": self.hires or {}}
        return {(stage, name): out for stage, outputs in stages.items() for name, out in outputs.items()}


def _empty_cache() -> list:
    return [None, None]  # [key, conds], the shape the host gives its cond caches


def _per_image(value, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def _encode(prompts) -> list:
    return [shared.sd_model.encode_text(text) for text in prompts]


class StableDiffusionProcessing:
    cached_c = _empty_cache()
    cached_uc = _empty_cache()

    def __init__(self, prompt="", negative_prompt="", seed=-1, subseed=-1, subseed_strength=0, batch_size=1,
                 n_iter=1, steps=20, cfg_scale=7.0, width=512, height=512, sampler_name="Euler a", styles=None,
                 override_settings=None, do_not_save_samples=True, denoising_strength=None, **kwargs):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.subseed, self.subseed_strength = seed, subseed, subseed_strength
        self.batch_size, self.n_iter, self.steps = batch_size, n_iter, steps
        self.cfg_scale, self.width, self.height = cfg_scale, width, height
        self.sampler_name = sampler_name
        self.styles = list(styles or [])
        self.override_settings = dict(override_settings or {})
        self.do_not_save_samples = do_not_save_samples
        self.denoising_strength = denoising_strength
        self.extra_generation_params = {}
        self.scripts = None
        self.script_args = ()
        self.disable_extra_networks = False
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_network_data = {}
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.c = self.uc = None
        self.comments = {}  # made once: the X/Y/Z plot's cells, shallow copies of one p, share it (as on the host)
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._bind_caches()

    def _bind_caches(self):
        """Point this object at the class-level cond caches (fresh ones when they do not persist)."""
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = _empty_cache()
            StableDiffusionProcessing.cached_uc = _empty_cache()
        self.cached_c, self.cached_uc = StableDiffusionProcessing.cached_c, StableDiffusionProcessing.cached_uc

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        total = self.batch_size * self.n_iter
        self.all_prompts = _per_image(self.prompt, total)
        self.all_negative_prompts = _per_image(self.negative_prompt, total)
        if self.seed in (None, -1):
            self.seed = random.randrange(4294967294)
        same_seed = self.subseed_strength != 0
        self.all_seeds = [int(self.seed) + (0 if same_seed else k) for k in range(total)]
        base_subseed = 0 if self.subseed in (None, -1) else int(self.subseed)
        self.all_subseeds = [base_subseed + k for k in range(total)]

    def select_batch(self, n):
        window = slice(n * self.batch_size, (n + 1) * self.batch_size)
        self.iteration = n
        self.prompts = self.all_prompts[window]
        self.negative_prompts = self.all_negative_prompts[window]
        self.seeds = self.all_seeds[window]
        self.subseeds = self.all_subseeds[window]
        return window

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def cond_cache_key(self, prompts, extra_network_data, hires_steps=None):
        o = shared.opts
        return (tuple(prompts), self.steps, hires_steps, o.CLIP_stop_at_last_layers, shared.sd_model.sd_checkpoint_info,
                extra_network_data, self.width, self.height, o.fp8_storage, o.cache_fp16_weight, o.emphasis)

    def conds_through(self, cache, prompts, extra_network_data, hires_steps=None):
        key = self.cond_cache_key(prompts, extra_network_data, hires_steps)
        if cache[0] is None or cache[0] != key:
            cache[1] = _encode(prompts)
            cache[0] = key
        return cache[1]

    def setup_conds(self):
        self.uc = self.conds_through(self.cached_uc, self.negative_prompts, self.extra_network_data)
        self.c = self.conds_through(self.cached_c, self.prompts, self.extra_network_data)

    def sample(self):
        return [FakeImage(cond, uncond, shared.sd_model.run_unet(seed))
                for cond, uncond, seed in zip(self.c, self.uc, self.seeds)]

    def close(self):
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = _empty_cache()
            StableDiffusionProcessing.cached_uc = _empty_cache()


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_c = _empty_cache()
    cached_hr_uc = _empty_cache()

    def __init__(self, enable_hr=False, hr_prompt="", hr_negative_prompt="", hr_scale=2.0, hr_second_pass_steps=0,
                 denoising_strength=0.7, **kwargs):
        self.enable_hr = enable_hr
        self.hr_prompt, self.hr_negative_prompt = hr_prompt, hr_negative_prompt
        self.hr_scale, self.hr_second_pass_steps = hr_scale, hr_second_pass_steps
        self.hr_extra_network_data = {}
        self.hr_c = self.hr_uc = None
        super().__init__(denoising_strength=denoising_strength, **kwargs)

    def _bind_caches(self):
        super()._bind_caches()
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessingTxt2Img.cached_hr_c = _empty_cache()
            StableDiffusionProcessingTxt2Img.cached_hr_uc = _empty_cache()
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        self.hr_prompt = self.hr_prompt or self.prompt
        self.hr_negative_prompt = self.hr_negative_prompt or self.negative_prompt
        total = len(self.all_prompts)
        self.all_hr_prompts = _per_image(self.hr_prompt, total)
        self.all_hr_negative_prompts = _per_image(self.hr_negative_prompt, total)
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.extra_generation_params["Hires upscale"] = self.hr_scale
        if self.hr_prompt != self.prompt:
            self.extra_generation_params["Hires prompt"] = self.hr_prompt

    def parse_extra_network_prompts(self):
        super().parse_extra_network_prompts()
        if self.enable_hr:
            window = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_negative_prompts = self.all_hr_negative_prompts[window]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.all_hr_prompts[window])

    def sample(self):
        images = super().sample()
        if self.enable_hr:
            self.hires_pass(images)
        return images

    def hires_pass(self, images):
        self.is_hr_pass = True
        try:
            if self.scripts is not None:
                self.scripts.before_hr(self)
            if not self.disable_extra_networks:
                extra_networks.activate(self, self.hr_extra_network_data)
            steps = self.hr_second_pass_steps or self.steps
            self.hr_uc = self.conds_through(self.cached_hr_uc, self.hr_negative_prompts, self.hr_extra_network_data, steps)
            self.hr_c = self.conds_through(self.cached_hr_c, self.hr_prompts, self.hr_extra_network_data, steps)
            for image, seed in zip(images, self.seeds):
                image.hires = shared.sd_model.run_unet(seed, "hires pass")
        finally:
            self.is_hr_pass = False


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img: shares the first-pass cond caches with txt2img (class lists on the base class) and has
    none for a hires pass (the host's modules/processing.py v1.10.1, lines 1183-1184 and 1557)."""

    def __init__(self, init_images=None, denoising_strength=0.75, mask=None, **kwargs):
        self.init_images = list(init_images or [])
        self.image_mask = mask
        super().__init__(denoising_strength=denoising_strength, **kwargs)


class Processed:
    """What ``process_images`` returns (the images are ``FakeImage`` objects)."""

    def __init__(self, p, images, infotexts, comments):
        self.images = images
        self.infotexts = infotexts
        self.all_prompts = list(p.all_prompts)
        self.all_negative_prompts = list(p.all_negative_prompts)
        self.all_seeds = list(p.all_seeds)
        self.comments = "".join(f"{text}\n" for text in comments)
        self.extra_generation_params = dict(p.extra_generation_params)
        self.prompt = self.all_prompts[0] if self.all_prompts else ""
        self.seed = self.all_seeds[0] if self.all_seeds else -1

    @property
    def info(self) -> str:
        return json.dumps({"prompt": self.prompt, "seed": self.seed, "all_prompts": self.all_prompts,
                           "all_seeds": self.all_seeds, "infotexts": self.infotexts,
                           "extra_generation_params": {k: str(v) for k, v in self.extra_generation_params.items()}})


def create_infotext(p, index) -> str:
    """Prompt, ``Negative prompt: …`` when there is one, and the parameters line."""
    fields = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": p.all_seeds[index],
              "Size": f"{p.width}x{p.height}", "Model": shared.sd_model.sd_checkpoint_info.name}
    fields.update(p.extra_generation_params)
    fields["Version"] = "double"
    line = ", ".join(f"{key}: {infotext_utils.quote(value)}" for key, value in fields.items() if value is not None)
    negative = p.all_negative_prompts[index]
    parts = [p.all_prompts[index]] + ([f"Negative prompt: {negative}"] if negative else []) + [line]
    return "\n".join(parts).strip()


def _run_hooks(p, hook, *args, **kwargs):
    if p.scripts is not None:
        getattr(p.scripts, hook)(p, *args, **kwargs)


def process_images(p) -> Processed:
    _run_hooks(p, "before_process")
    previous = {key: shared.opts.data.get(key) for key in p.override_settings}
    try:
        for key, value in p.override_settings.items():
            shared.opts.set(key, value)
        return _generate(p)
    finally:
        for key, value in previous.items():
            shared.opts.set(key, value)


def _generate(p) -> Processed:
    sd_hijack.model_hijack.comments.clear()
    p.setup_prompts()
    _run_hooks(p, "process")
    images, infotexts = [], []
    for n in range(p.n_iter):
        window = p.select_batch(n)
        batch_kw = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        _run_hooks(p, "before_process_batch", **batch_kw)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        _run_hooks(p, "process_batch", **batch_kw)
        p.setup_conds()
        for text in sd_hijack.model_hijack.comments:
            p.comment(text)
        batch = p.sample()
        _run_hooks(p, "postprocess_batch", batch, batch_number=n)
        for image, index in zip(batch, range(window.start, window.stop)):
            image.info = create_infotext(p, index)
            infotexts.append(image.info)
        images += batch
    if p.extra_network_data and not p.disable_extra_networks:
        extra_networks.deactivate(p, p.extra_network_data)
    result = Processed(p, images, infotexts, p.comments)
    _run_hooks(p, "postprocess", result)
    p.close()
    return result
