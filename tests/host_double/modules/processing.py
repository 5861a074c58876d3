"""``modules.processing``: the generation loop, as far as extra networks, scripts and conds go
(reference §3.3, §4.2).

``process_images(p)`` runs, for a ``StableDiffusionProcessingTxt2Img`` ``p``:
``scripts.before_process`` → override settings → ``scripts.process`` → per batch
``before_process_batch`` → ``parse_extra_network_prompts`` (positive prompts only) →
``extra_networks.activate`` (then ``after_extra_networks_activate``) → ``process_batch`` →
``setup_conds`` (negative, then positive conds through the class-level cond cache keyed on the
cleaned prompts *and* ``extra_network_data``) → sampling (the UNet layers) → with ``enable_hr``, the
hires pass (``activate`` of the hires data, hires conds, the UNet layers again) → infotexts; after
all batches ``extra_networks.deactivate`` and ``scripts.postprocess``.

An "image" is a ``FakeImage`` of layer outputs: ``cond`` / ``uncond`` (text-encoder layers run on
the prompt / negative prompt), ``unet`` (first pass) and ``hires`` (hires pass or None).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from modules import extra_networks, infotext_utils, sd_hijack, shared


@dataclass
class FakeImage:
    cond: dict
    uncond: dict
    unet: dict
    hires: dict | None = None
    info: str = ""

    def layers(self) -> dict:
        """Every output of this image, keyed by (stage, layer name)."""
        out = {("cond", k): v for k, v in self.cond.items()}
        out.update({("uncond", k): v for k, v in self.uncond.items()})
        out.update({("unet", k): v for k, v in self.unet.items()})
        out.update({("hires", k): v for k, v in (self.hires or {}).items()})
        return out


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    return [model.encode_text(prompt) for prompt in prompts]


class StableDiffusionProcessing:
    cached_uc = [None, None]
    cached_c = [None, None]

    def __init__(self, prompt="", negative_prompt="", seed=-1, subseed=-1, subseed_strength=0, batch_size=1,
                 n_iter=1, steps=20, cfg_scale=7.0, width=512, height=512, sampler_name="Euler a", styles=None,
                 override_settings=None, do_not_save_samples=True, denoising_strength=None, **kwargs):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = subseed_strength
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.width = width
        self.height = height
        self.sampler_name = sampler_name
        self.styles = styles or []
        self.override_settings = dict(override_settings or {})
        self.denoising_strength = denoising_strength
        self.do_not_save_samples = do_not_save_samples
        self.extra_generation_params = {}
        self.comments = {}
        self.scripts = None
        self.script_args = ()
        self.disable_extra_networks = False
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_network_data = {}
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.c = self.uc = None
        for k, v in kwargs.items():
            setattr(self, k, v)
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]
        self.cached_c = StableDiffusionProcessing.cached_c
        self.cached_uc = StableDiffusionProcessing.cached_uc

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        n = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else [self.prompt] * n
        self.all_negative_prompts = (list(self.negative_prompt) if isinstance(self.negative_prompt, list)
                                     else [self.negative_prompt] * n)
        if self.seed is None or self.seed == -1:
            self.seed = int(random.randrange(4294967294))
        self.all_seeds = [int(self.seed) + (i if self.subseed_strength == 0 else 0) for i in range(n)]
        self.all_subseeds = [int(self.subseed if self.subseed not in (None, -1) else 0) + i for i in range(n)]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None):
        opts = shared.opts
        return (required_prompts, steps, hires_steps, opts.CLIP_stop_at_last_layers, shared.sd_model.sd_checkpoint_info,
                extra_network_data, opts.sdxl_crop_left, opts.sdxl_crop_top, self.width, self.height,
                opts.fp8_storage, opts.cache_fp16_weight, opts.emphasis)

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        cached_params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps)
        for cache in caches:
            if cache[0] is not None and cached_params == cache[0]:
                return cache[1]
        cache = caches[0]
        cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps)
        cache[0] = cached_params
        return cache[1]

    def setup_conds(self):
        self.uc = self.get_conds_with_caching(get_learned_conditioning, list(self.negative_prompts), self.steps,
                                              [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(get_learned_conditioning, list(self.prompts), self.steps,
                                             [self.cached_c], self.extra_network_data)

    def sample(self):
        return [FakeImage(self.c[i], self.uc[i], shared.sd_model.run_unet(self.seeds[i])) for i in range(len(self.seeds))]

    def close(self):
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    def __init__(self, enable_hr=False, hr_prompt="", hr_negative_prompt="", hr_scale=2.0, hr_second_pass_steps=0,
                 denoising_strength=0.7, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.enable_hr = enable_hr
        self.hr_prompt = hr_prompt
        self.hr_negative_prompt = hr_negative_prompt
        self.hr_scale = hr_scale
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_extra_network_data = {}
        self.hr_c = self.hr_uc = None
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
            StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        n = len(self.all_prompts)
        self.all_hr_prompts = [self.hr_prompt] * n if not isinstance(self.hr_prompt, list) else list(self.hr_prompt)
        self.all_hr_negative_prompts = ([self.hr_negative_prompt] * n if not isinstance(self.hr_negative_prompt, list)
                                        else list(self.hr_negative_prompt))
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.extra_generation_params["Hires upscale"] = self.hr_scale
        if self.hr_prompt != self.prompt:
            self.extra_generation_params["Hires prompt"] = self.hr_prompt

    def parse_extra_network_prompts(self):
        super().parse_extra_network_prompts()
        if self.enable_hr:
            lo, hi = self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size
            self.hr_prompts = self.all_hr_prompts[lo:hi]
            self.hr_negative_prompts = self.all_hr_negative_prompts[lo:hi]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        hires_steps = self.hr_second_pass_steps or self.steps
        self.hr_uc = self.get_conds_with_caching(get_learned_conditioning, list(self.hr_negative_prompts), self.steps,
                                                 [self.cached_hr_uc, self.cached_uc], self.hr_extra_network_data,
                                                 hires_steps)
        self.hr_c = self.get_conds_with_caching(get_learned_conditioning, list(self.hr_prompts), self.steps,
                                                [self.cached_hr_c, self.cached_c], self.hr_extra_network_data,
                                                hires_steps)

    def setup_conds(self):
        super().setup_conds()
        self.hr_uc = None
        self.hr_c = None
        if self.enable_hr and shared.opts.hires_fix_use_firstpass_conds:
            self.calculate_hr_conds()

    def sample(self):
        images = super().sample()
        if not self.enable_hr:
            return images
        self.sample_hr_pass(images)
        return images

    def sample_hr_pass(self, images):
        self.is_hr_pass = True
        if self.scripts is not None:
            self.scripts.before_hr(self)
        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()
        for i, image in enumerate(images):
            image.hires = shared.sd_model.run_unet(self.seeds[i], "hires pass")
        self.is_hr_pass = False


@dataclass
class Processed:
    images: list
    infotexts: list
    all_prompts: list
    all_negative_prompts: list
    all_seeds: list
    comments: str
    extra_generation_params: dict
    prompt: str = ""
    seed: int = -1

    @property
    def info(self) -> str:
        return json.dumps({"prompt": self.prompt, "seed": self.seed, "all_prompts": self.all_prompts,
                           "all_seeds": self.all_seeds, "infotexts": self.infotexts,
                           "extra_generation_params": {k: str(v) for k, v in self.extra_generation_params.items()}})


def create_infotext(p, index):
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": p.all_seeds[index],
              "Size": f"{p.width}x{p.height}", "Model": shared.sd_model.sd_checkpoint_info.name,
              **p.extra_generation_params, "Version": "double"}
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {p.all_negative_prompts[index]}" if p.all_negative_prompts[index] else ""
    return f"{p.all_prompts[index]}{negative}\n{text}".strip()


def process_images(p) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: shared.opts.data.get(k) for k in p.override_settings}
    try:
        for k, v in p.override_settings.items():
            shared.opts.set(k, v)
        return process_images_inner(p)
    finally:
        for k, v in stored_opts.items():
            shared.opts.set(k, v)


def process_images_inner(p) -> Processed:
    sd_hijack.model_hijack.comments.clear()
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    for n in range(p.n_iter):
        p.iteration = n
        lo, hi = n * p.batch_size, (n + 1) * p.batch_size
        p.prompts = p.all_prompts[lo:hi]
        p.negative_prompts = p.all_negative_prompts[lo:hi]
        p.seeds = p.all_seeds[lo:hi]
        p.subseeds = p.all_subseeds[lo:hi]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.setup_conds()
        for comment in sd_hijack.model_hijack.comments:
            p.comment(comment)
        batch = p.sample()
        if p.scripts is not None:
            p.scripts.postprocess_batch(p, batch, batch_number=n)
        for i, image in enumerate(batch):
            image.info = create_infotext(p, lo + i)
            infotexts.append(image.info)
        images.extend(batch)
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    res = Processed(images, infotexts, list(p.all_prompts), list(p.all_negative_prompts), list(p.all_seeds),
                    "".join(f"{c}\n" for c in p.comments), dict(p.extra_generation_params),
                    p.all_prompts[0] if p.all_prompts else "", p.all_seeds[0] if p.all_seeds else -1)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    p.close()
    return res
