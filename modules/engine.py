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

from modules import clean_exit, image_saving, infotext, latent_preview, offload, optimizations, samplers, upscaling
from modules.devices import DevicePolicy, configure_backend
from modules.extension_callbacks import (ImageSaveParams, JobErrors, attach_denoise_hooks, run_before_image_saved,
                                         run_image_saved)
from modules.jobs import Job, JobQueue
from modules.model_files import ModelFile
from modules.model_loading import LoadedModel
from modules.model_manager import ModelManager
from modules.paths import Paths
from modules.processing import FinishedImage, GenerationResult, generate
from modules.prompts import PromptEnvironment
from modules.request import GenerationRequest
from modules.sampling import Hooks
from modules.script_processing import ScriptedJob
from modules.scripting import ScriptRegistry
from modules.settings import Settings

log = logging.getLogger(__name__)

VERSION = "atelier-0.1.0"
# Options a request may override for itself (A1111's override_settings) without touching saved settings.
REQUEST_OPTIONS = {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "samples_save",
                   "grid_save", "add_model_hash_to_info", "add_model_name_to_info", "add_vae_hash_to_info",
                   "add_vae_name_to_info", "add_version_to_infotext", "token_merging_ratio"}


@dataclass
class JobOutput:
    """What a finished job hands back: images with their infotexts, and the grid. Images past the infotexts are
    extras a script added in `postprocess` (A1111's way: ControlNet's detected maps): returned and shown, but
    never saved, with no infotext of their own, and left out of the grid."""

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
        self.scripts = ScriptRegistry()  # extensions' scripts (modules/extensions.py loads them)
        self.extensions = None  # LoadedExtensions, set by webui.py after load_extensions()
        self.queue = JobQueue(self.run_job, preview_every=int(self.settings.get("show_progress_every_n_steps")))
        self.exit_wait = clean_exit.DEFAULT_EXIT_WAIT  # --exit-wait: how long shutdown waits for a running job
        clean_exit.stop_at_exit(self)  # never let the interpreter tear down under a job inside torch
        self.settings.on_change.append(self._setting_changed)
        configure_backend(policy)
        upscaling.refresh_model_upscalers(paths, policy, self.settings)  # a folder scan; models load on first use

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
        try:
            return self._run_job(job)
        finally:  # job-scoped model changes never outlive the job, whether it finished or failed
            if self.models.current is not None:
                optimizations.remove_token_merging(self.models.current.unet)

    def _run_job(self, job: Job) -> JobOutput:
        request = job.request
        output = JobOutput(GenerationResult())
        job.result = output
        errors = JobErrors(output.result.notes)  # extension failures: named in the job's notes, never fatal
        scripts = self.scripts.for_job(request, errors)
        if scripts is not None:  # scripts' hooks around processing, as A1111 runs them
            ScriptedJob(self, job, output, scripts, errors).run()
        else:
            model, checkpoint = self.load_model(request)
            hooks = self.hooks.copy()
            attach_denoise_hooks(hooks, errors)

            delivered: set[int] = set()

            def on_image(finished: FinishedImage) -> None:
                if finished.index in delivered:  # an out-of-memory retry remakes, identically, what was kept
                    return
                delivered.add(finished.index)
                text = self.infotext(request, finished, model_file=checkpoint)
                self.keep_image(output, request, finished.image, text, finished.seed, errors)

            def attempt() -> GenerationResult:
                job.control.step = 0  # an out-of-memory retry starts the progress again
                return generate(request, model, job.control, hooks, on_image, self.prompt_environment())

            notes = output.result.notes
            output.result = offload.retry_on_oom(model, attempt, notes)
            output.result.notes.extend(note for note in notes if note not in output.result.notes)
        if output.grid is None:
            self._finish_grid(request, output, "img2img" if request.is_img2img else "txt2img")
        return output

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "show_progress_every_n_steps":  # applies from the next step, whoever changed it
            self.queue.preview_every = int(value)

    def load_model(self, request: GenerationRequest) -> tuple[LoadedModel, ModelFile]:
        model, model_file = self.models.get(self.checkpoint_name(request), self.option(request, "sd_vae"))
        # Per job, from settings: the live-preview method, and token merging (run_job removes it afterwards).
        model.previewer = latent_preview.previewer_for(model, self.settings.get("show_progress_type"),
                                                       self.paths.data_dir)
        optimizations.apply_token_merging(model.unet, self.option(request, "token_merging_ratio"))
        return model, model_file

    def checkpoint_name(self, request: GenerationRequest) -> Optional[str]:
        """The checkpoint a request runs on: its own, else the one chosen in settings (the UI's dropdown) if it
        still exists (a stale name in config.json must not fail every job), else None (whatever is loaded)."""
        wanted = request.checkpoint
        if not wanted:
            chosen = self.settings.get("sd_model_checkpoint")
            wanted = chosen if chosen and self.models.checkpoints.find(chosen) else None
        return wanted

    def prompt_environment(self) -> PromptEnvironment:
        """Prompt settings, styles.csv and the wildcards folder, read for each job (modules/prompts.py)."""
        return PromptEnvironment.from_settings(self.settings.get, self.paths)

    def keep_image(self, output: JobOutput, request: GenerationRequest, image: Image.Image, text: str,
                   seed: Optional[int], errors: Optional[JobErrors] = None, p: Any = None) -> None:
        """Add a finished image to the job's output and, if saving is on, save it between the extensions'
        on_before_image_saved (which may change the image or its infotext) and on_image_saved."""
        output.images.append(image)
        output.infotexts.append(text)
        if not self.option(request, "samples_save") or request.do_not_save_samples:
            return
        saving = ImageSaveParams(image, p, str(self._outdir("img2img" if request.is_img2img else "txt2img")),
                                 {"parameters": text})
        run_before_image_saved(saving, errors)
        info = saving.pnginfo.get("parameters")
        extra = {k: str(v) for k, v in saving.pnginfo.items() if k != "parameters"}
        path = image_saving.save_image(saving.image, saving.filename, seed=seed, infotext=info,
                                       extension=self.option(request, "samples_format"), extra_pnginfo=extra or None)
        saving.filename = str(path)
        run_image_saved(saving, errors)
        output.paths.append(path)

    def infotext(self, request: GenerationRequest, image: FinishedImage, model_file=None,
                 extra: Optional[dict[str, Any]] = None) -> str:
        """The image's infotext; `extra` (a script's p.extra_generation_params) goes last, as in A1111."""
        model = self.models.current
        vae_file = getattr(model, "vae_file", None) if model else None
        opt = lambda name: self.option(request, name)  # noqa: E731
        extra = {**infotext.generation_extras(request), **image.extra_params,
                 **_script_params(extra or {}, image.index)}
        if opt("token_merging_ratio"):
            extra[optimizations.TOKEN_MERGING_KEY] = opt("token_merging_ratio")
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
        generated = output.images[:len(output.infotexts)]  # not a script's extras (see JobOutput)
        if len(generated) < 2:
            return
        output.grid = image_saving.make_grid(generated, rows=None)
        if self.option(request, "grid_save") and not request.do_not_save_grid:
            image_saving.save_grid(output.grid, self._outdir(kind, grid=True), infotext=output.infotexts[0],
                                   extension=self.settings.get("grid_format"))

    def shutdown(self) -> None:
        """Cancel queued jobs; interrupt the running one and wait (up to exit_wait) until it leaves torch."""
        clean_exit.stop_worker(self.queue, self.exit_wait)


def _script_params(params: dict[str, Any], index: int) -> dict[str, Any]:
    """A script's extra_generation_params for one image: a list gives each image its own value (A1111)."""
    values = {}
    for key, value in params.items():
        if isinstance(value, list):
            value = value[index] if 0 <= index < len(value) else None
        if not callable(value):
            values[key] = value
    return values
