"""The processing object `p` that scripts get: A1111's field names over our GenerationRequest.

`ProcessingContext.from_request` copies the request's fields onto plain attributes (A1111's names:
`image_mask` for our `mask`, the rest alike), so scripts read and assign them freely, as they do in A1111.
`to_request()` turns the current attributes back into a request. Per image, the job uses `all_prompts`,
`all_negative_prompts`, `all_seeds` and `all_subseeds` as they are after `process()` and
`before_process_batch()`, and writes `extra_generation_params` into every infotext (modules/script_processing.py).
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Optional

from modules import noise
from modules.request import GenerationRequest

if TYPE_CHECKING:
    from modules.model_files import ModelFile
    from modules.model_loading import LoadedModel
    from modules.sampling import DenoiseState
    from modules.scripting import JobScripts

# A1111 attribute -> GenerationRequest field (the same name unless noted).
REQUEST_FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "styles": "styles",
    "seed": "seed", "subseed": "subseed", "subseed_strength": "subseed_strength",
    "seed_resize_from_w": "seed_resize_from_w", "seed_resize_from_h": "seed_resize_from_h",
    "sampler_name": "sampler_name", "scheduler": "scheduler", "steps": "steps", "cfg_scale": "cfg_scale",
    "width": "width", "height": "height", "batch_size": "batch_size", "n_iter": "n_iter",
    "init_images": "init_images", "image_mask": "mask", "resize_mode": "resize_mode",
    "denoising_strength": "denoising_strength", "mask_blur": "mask_blur", "inpainting_fill": "inpainting_fill",
    "inpaint_full_res": "inpaint_full_res", "inpaint_full_res_padding": "inpaint_full_res_padding",
    "inpainting_mask_invert": "inpainting_mask_invert",
    "enable_hr": "enable_hr", "hr_scale": "hr_scale", "hr_upscaler": "hr_upscaler",
    "hr_second_pass_steps": "hr_second_pass_steps", "hr_resize_x": "hr_resize_x", "hr_resize_y": "hr_resize_y",
    "override_settings": "override_settings", "do_not_save_samples": "do_not_save_samples",
    "do_not_save_grid": "do_not_save_grid",
}
# Constructor keywords A1111 code passes that mean the same as one of ours.
ALIASES = {"mask": "image_mask", "sampler_index": "sampler_name"}


class ModelInfo:
    """A read-only stand-in for A1111's `sd_model` / `shared.sd_model`: what model is loaded, not the model."""

    def __init__(self, model: "LoadedModel", model_file: Optional["ModelFile"] = None):
        self._model, self._file = model, model_file

    @property
    def family(self) -> str:
        return self._model.family.name

    is_sdxl = property(lambda self: self._model.family.is_sdxl)
    is_sd2 = property(lambda self: self._model.family.name.startswith("sd2"))
    is_sd1 = property(lambda self: self._model.family.name == "sd1")
    is_sd3 = property(lambda self: False)
    is_ssd = property(lambda self: False)
    is_inpainting = property(lambda self: self._model.family.inpainting)

    @property
    def sd_checkpoint_info(self) -> Optional["CheckpointInfo"]:
        return CheckpointInfo(self._file) if self._file is not None else None

    @property
    def sd_model_checkpoint(self) -> Optional[str]:
        return str(self._file.path) if self._file is not None else None

    @property
    def sd_model_hash(self) -> Optional[str]:
        return self._file.shorthash if self._file is not None else None

    def __repr__(self) -> str:
        return f"ModelInfo({self._file.name if self._file else '?'}, {self._model.family.label})"


class CheckpointInfo:
    """A1111's CheckpointInfo fields, read from our ModelFile."""

    def __init__(self, model_file: "ModelFile"):
        self._file = model_file

    filename = property(lambda self: str(self._file.path))
    name = property(lambda self: self._file.name)
    name_for_extra = property(lambda self: self._file.model_name)
    model_name = property(lambda self: self._file.model_name)
    title = property(lambda self: self._file.title)
    hash = property(lambda self: self._file.shorthash[:8])
    sha256 = property(lambda self: self._file.sha256)
    shorthash = property(lambda self: self._file.shorthash)


class ProcessingContext:
    """A1111's StableDiffusionProcessing: the job's settings plus per-image lists, for scripts to change."""

    def __init__(self, request: Optional[GenerationRequest] = None, **kwargs: Any):
        request = request or GenerationRequest()
        for attr, name in REQUEST_FIELDS.items():
            value = getattr(request, name)
            setattr(self, attr, list(value) if isinstance(value, list) else
                    dict(value) if isinstance(value, dict) else value)
        self.request = request  # what the job was asked for (unchanged)
        self.scripts: Optional["JobScripts"] = None
        self.script_args: Optional[list[Any]] = None
        self.extra_generation_params: dict[str, Any] = {}
        self.override_settings_restore_afterwards = True
        self.all_prompts: Optional[list[str]] = None
        self.all_negative_prompts: Optional[list[str]] = None
        self.all_seeds: Optional[list[int]] = None
        self.all_subseeds: Optional[list[int]] = None
        self.prompts: list[str] = []  # this batch's slice of the lists above
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.iteration = 0  # the batch being made
        self.batch_index = 0  # the image within the batch (postprocess_image)
        self.is_hr_pass = False  # True while the hires pass is being set up and sampled
        self.sd_model: Optional[ModelInfo] = None
        self.comments: dict[str, Any] = {}
        self.user: Optional[str] = None
        self.is_api = False
        self.outpath_samples: Optional[str] = None
        self.outpath_grids: Optional[str] = None
        self.restore_faces = False
        self.tiling = False
        self.disable_extra_networks = False
        self.sampler = None
        self.job_timestamp = ""
        self.main_prompt = request.prompt
        self.main_negative_prompt = request.negative_prompt
        self._add_denoise_hook: Optional[Callable[[str, Callable], None]] = None  # set by the job running p
        for key, value in kwargs.items():  # A1111 constructor keywords; unknown ones are kept as attributes
            setattr(self, ALIASES.get(key, key), value)

    @classmethod
    def from_request(cls, request: GenerationRequest) -> "ProcessingContext":
        kind = Img2ImgContext if request.is_img2img else Txt2ImgContext
        return kind(request)

    def to_request(self) -> GenerationRequest:
        """The request these attributes describe now (prompts and seeds as set, not the per-image lists)."""
        values = {name: getattr(self, attr) for attr, name in REQUEST_FIELDS.items()}
        values["init_images"] = list(values["init_images"] or [])
        values["styles"] = list(values["styles"] or [])
        values["override_settings"] = dict(values["override_settings"] or {})
        for name, empty in (("prompt", ""), ("negative_prompt", ""), ("seed", -1), ("subseed", -1)):
            if isinstance(values[name], list):  # A1111 allows lists of prompts and seeds
                values[name] = values[name][0] if values[name] else empty
        return self.request.copy(**values)

    def add_denoise_hook(self, point: str, fn: Callable[["DenoiseState"], None]) -> None:
        """A denoise-loop hook for this job only (any of sampling.HOOK_POINTS); gone when the job ends.
        Call it from a script's process() or process_batch()."""
        if self._add_denoise_hook is None:
            raise RuntimeError("add_denoise_hook: this processing object is not running in a job")
        self._add_denoise_hook(point, fn)

    @property
    def is_img2img(self) -> bool:
        return bool(self.init_images)

    @property
    def sd_model_name(self) -> Optional[str]:
        info = self.sd_model.sd_checkpoint_info if self.sd_model else None
        return info.model_name if info else None

    @property
    def sd_model_hash(self) -> Optional[str]:
        return self.sd_model.sd_model_hash if self.sd_model else None

    def setup_seeds(self) -> None:
        """Fill all_seeds / all_subseeds unless a script already did (A1111 also takes a list as `seed`)."""
        total = self.batch_size * self.n_iter
        if self.all_seeds is None:
            self.all_seeds = list(self.seed) if isinstance(self.seed, list) else noise.seeds_for(self.seed, total)
        if self.all_subseeds is None:
            self.all_subseeds = (list(self.subseed) if isinstance(self.subseed, list)
                                 else noise.seeds_for(self.subseed, total))
        self.seed, self.subseed = self.all_seeds[0], self.all_subseeds[0]

    def setup_prompts(self, prompts: list[str], negatives: list[str]) -> None:
        """Fill all_prompts / all_negative_prompts unless a script already did (or gave lists as prompts)."""
        if isinstance(self.prompt, list):
            prompts = list(self.prompt)
        if isinstance(self.negative_prompt, list):
            negatives = list(self.negative_prompt)
        self.all_prompts = self.all_prompts or prompts
        self.all_negative_prompts = self.all_negative_prompts or negatives

    def close(self) -> None:
        """A1111 frees caches here; nothing to free."""

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return 0.0


class Txt2ImgContext(ProcessingContext):
    """A1111's StableDiffusionProcessingTxt2Img."""


class Img2ImgContext(ProcessingContext):
    """A1111's StableDiffusionProcessingImg2Img."""


class Processed:
    """What a generation made, with A1111's field names (what process_images returns and run() may return)."""

    def __init__(self, p: ProcessingContext, images: list[Any], infotexts: Optional[list[str]] = None,
                 index_of_first_image: int = 0, comments: str = "", notes: Optional[list[str]] = None):
        self.images = images
        self.infotexts = list(infotexts or [])
        self.info = self.infotexts[0] if self.infotexts else ""
        self.index_of_first_image = index_of_first_image
        self.comments = comments
        self.notes = list(notes or [])
        self.prompt = p.all_prompts[0] if p.all_prompts else p.prompt
        self.negative_prompt = p.all_negative_prompts[0] if p.all_negative_prompts else p.negative_prompt
        self.all_prompts = list(p.all_prompts or [self.prompt])
        self.all_negative_prompts = list(p.all_negative_prompts or [self.negative_prompt])
        self.all_seeds = list(p.all_seeds or [p.seed])
        self.all_subseeds = list(p.all_subseeds or [p.subseed])
        self.seed, self.subseed = self.all_seeds[0], self.all_subseeds[0]
        self.width, self.height = p.width, p.height
        self.sampler_name, self.scheduler = p.sampler_name, p.scheduler
        self.cfg_scale, self.steps, self.batch_size = p.cfg_scale, p.steps, p.batch_size
        self.denoising_strength = p.denoising_strength
        self.subseed_strength = p.subseed_strength
        self.styles = list(p.styles or [])
        self.extra_generation_params = dict(p.extra_generation_params)
        self.sd_model_name, self.sd_model_hash = p.sd_model_name, p.sd_model_hash
        self.job_timestamp = p.job_timestamp
        self.clip_skip = p.to_request().clip_skip if isinstance(p.override_settings, dict) else 1
        self.restore_faces = False
        self.interrupted = False

    def js(self) -> str:
        import json

        keys = ("prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
                "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "scheduler", "cfg_scale",
                "steps", "batch_size", "denoising_strength", "extra_generation_params", "index_of_first_image",
                "infotexts", "styles", "job_timestamp", "clip_skip", "sd_model_name", "sd_model_hash")
        return json.dumps({k: getattr(self, k) for k in keys}, default=str)

    def infotext(self, p: ProcessingContext, index: int) -> str:
        return self.infotexts[index] if 0 <= index < len(self.infotexts) else self.info


def fixed_seed(seed: Any) -> int:
    """A1111's get_fixed_seed: -1 (or None, or '') becomes a random seed."""
    if seed in (None, "", -1) or (isinstance(seed, (int, float)) and seed == -1):
        return int(random.randrange(noise.MAX_SEED))
    return int(seed)
