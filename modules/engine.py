"""The engine: one job queue in front of one model manager. UI, API and scripts submit requests here.

The worker thread runs each job: pick the model the request asks for, generate, write infotext,
save each image as soon as it is finished, and hand back the result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from modules import image_saving, infotext, samplers
from modules.devices import DevicePolicy, configure_backend
from modules.jobs import Job, JobQueue
from modules.model_manager import ModelManager
from modules.paths import Paths
from modules.processing import FinishedImage, GenerationResult, generate
from modules.request import GenerationRequest
from modules.sampling import Hooks
from modules.settings import Settings

log = logging.getLogger(__name__)

VERSION = "atelier-0.1.0"
# Options a request may override for itself (A1111's override_settings) without touching saved settings.
REQUEST_OPTIONS = {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "samples_save",
                   "grid_save", "add_model_hash_to_info", "add_model_name_to_info", "add_vae_hash_to_info",
                   "add_vae_name_to_info", "add_version_to_infotext"}


@dataclass
class JobOutput:
    """What a finished job hands back: images (grid first when there is one) with their infotexts."""

    result: GenerationResult
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    grid: Optional[Image.Image] = None


class Engine:
    def __init__(self, paths: Paths, policy: DevicePolicy, settings: Optional[Settings] = None):
        self.paths, self.policy = paths, policy
        self.settings = settings or Settings.load(paths.config_file)
        self.models = ModelManager(paths, policy, self.settings)
        self.hooks = Hooks()  # process-wide hooks (extensions); each job runs on a copy
        self.queue = JobQueue(self.run_job, preview_every=int(self.settings.get("show_progress_every_n_steps")))
        configure_backend(policy)

    def submit(self, request: GenerationRequest, kind: Optional[str] = None, **kwargs: Any) -> Job:
        request.validate()  # bad input fails here, before it reaches the queue
        return self.queue.submit(request, kind=kind or ("img2img" if request.is_img2img else "txt2img"), **kwargs)

    def generate(self, request: GenerationRequest, timeout: Optional[float] = None) -> Job:
        """Submit and wait: for scripts and tests."""
        return self.queue.wait(self.submit(request).id, timeout)

    def option(self, request: GenerationRequest, name: str) -> Any:
        if name in request.override_settings and name in REQUEST_OPTIONS:
            return request.override_settings[name]
        return self.settings.get(name)

    def run_job(self, job: Job) -> JobOutput:
        request = job.request
        model, checkpoint = self.models.get(request.checkpoint, self.option(request, "sd_vae"))
        output = JobOutput(GenerationResult())
        job.result = output
        kind = "img2img" if request.is_img2img else "txt2img"
        save = self.option(request, "samples_save") and not request.do_not_save_samples
        fmt = self.option(request, "samples_format")

        def on_image(finished: FinishedImage) -> None:
            text = self.infotext(request, finished, model_file=checkpoint)
            output.images.append(finished.image)
            output.infotexts.append(text)
            if save:
                folder = self._outdir(kind)
                output.paths.append(image_saving.save_image(finished.image, folder, seed=finished.seed,
                                                            infotext=text, extension=fmt))

        output.result = generate(request, model, job.control, self.hooks.copy(), on_image)
        self._finish_grid(request, output, kind)
        return output

    def infotext(self, request: GenerationRequest, image: FinishedImage, model_file=None) -> str:
        model = self.models.current
        vae_file = getattr(model, "vae_file", None) if model else None
        opt = lambda name: self.option(request, name)  # noqa: E731
        extra = infotext.generation_extras(request)
        sampler, schedule = samplers.infotext_names(request.sampler_name, request.scheduler)
        return infotext.create_infotext(
            request.copy(sampler_name=sampler, scheduler=schedule), prompt=image.prompt, negative_prompt=image.negative_prompt, seed=image.seed,
            subseed=image.subseed,
            model_name=model_file.model_name if model_file and opt("add_model_name_to_info") else None,
            model_hash=model_file.shorthash if model_file and opt("add_model_hash_to_info") else None,
            vae_name=vae_file.model_name if vae_file and opt("add_vae_name_to_info") else None,
            vae_hash=vae_file.shorthash if vae_file and opt("add_vae_hash_to_info") else None,
            extra=extra, version=VERSION if opt("add_version_to_infotext") else None)

    def _outdir(self, kind: str, grid: bool = False) -> Path:
        custom = self.settings.get(f"outdir_{kind}_samples") if not grid else ""
        if custom:
            return Path(custom)
        return image_saving.dated_folder(self.paths.outputs_dir, f"{kind}-{'grids' if grid else 'images'}")

    def _finish_grid(self, request: GenerationRequest, output: JobOutput, kind: str) -> None:
        if len(output.images) < 2:
            return
        output.grid = image_saving.make_grid(output.images, rows=None)
        if self.option(request, "grid_save") and not request.do_not_save_grid:
            image_saving.save_grid(output.grid, self._outdir(kind, grid=True), infotext=output.infotexts[0],
                                   extension=self.settings.get("grid_format"))

    def shutdown(self) -> None:
        self.queue.shutdown(timeout=5)
