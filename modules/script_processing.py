"""A job with scripts: A1111's process_images over our processing, calling each script hook in A1111's order.

    setup → run() of the selected script, which calls process_images(p) (or, with none selected, the job does):
        before_process → model, seeds and prompts → process
        per batch: before_process_batch → process_batch
                   → generate (process_before_every_sampling before each pass; before_hr before the hires one)
                   → postprocess_batch → postprocess_batch_list
                   → per image: postprocess_image → infotext (+ p.extra_generation_params) → save
        postprocess

Processing knows nothing of `p`: each batch becomes one or more GenerationRequests built from `p` as the
scripts left it. A batch whose images share prompts and have consecutive seeds is one request (the batch
size of the job); a batch that scripts made uneven (different prompts per image, arbitrary seeds) runs
image by image. That gives the same images, since image i of a batch equals its seed alone (sampling.py).
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from modules.extension_callbacks import JobErrors, attach_denoise_hooks
from modules.processing import FinishedImage, GenerationResult, SamplingStart, generate
from modules.processing_context import ModelInfo, ProcessingContext, Processed
from modules.prompts import prepare_prompts
from modules.request import GenerationRequest
from modules.sampling import DenoiseState
from modules.scripting import JobScripts, PostprocessBatchListArgs, PostprocessImageArgs, ScriptError

if TYPE_CHECKING:
    from modules.engine import Engine, JobOutput
    from modules.jobs import Job

MAX_SEED = 2**32

_active = threading.local()


def current() -> Optional["ScriptedJob"]:
    """The scripted job running on this thread (so A1111's process_images(p) can run inside it)."""
    return getattr(_active, "job", None)


class ScriptedJob:
    def __init__(self, engine: "Engine", job: "Job", output: "JobOutput", scripts: JobScripts, errors: JobErrors):
        self.engine, self.job, self.output, self.scripts, self.errors = engine, job, output, scripts, errors
        self.hooks = engine.hooks.copy()
        attach_denoise_hooks(self.hooks, errors)
        self.prompt_env = engine.prompt_environment()
        self.control = _RunControl(job.control)
        self.interrupted = False

    def run(self) -> None:
        p = ProcessingContext.from_request(self.job.request)
        p.scripts, p.script_args = self.scripts, list(self.scripts.script_args)
        p.job_timestamp = time.strftime("%Y%m%d%H%M%S")
        p._add_denoise_hook = self._add_denoise_hook
        if self.engine.models.current is not None:  # until process_images loads the one the job asks for
            p.sd_model = ModelInfo(self.engine.models.current, self.engine.models.current_file)
        previous, _active.job = current(), self
        try:
            self.scripts.setup(p)
            processed = self.scripts.run(p)
            if processed is None:
                processed = self.process_images(p)
        finally:
            _active.job = previous
        self._hand_back(processed)

    def _add_denoise_hook(self, point: str, fn: Callable[[DenoiseState], None]) -> None:
        owner = getattr(fn, "__module__", None) or "a script"
        self.hooks.add(point, lambda state: self.errors.call(fn, owner, f"denoise hook {point}", fn, state))

    # -- A1111's process_images -------------------------------------------------------------------------
    def process_images(self, p: ProcessingContext) -> Processed:
        scripts = p.scripts
        if scripts is not None:
            scripts.before_process(p)
        request = p.to_request().validate()
        model, model_file = self.engine.load_model(request)
        p.sd_model = ModelInfo(model, model_file)
        p.setup_seeds()
        options = self.prompt_env.options.with_overrides(request.override_settings)
        prompts, negatives = prepare_prompts(request.prompt, request.negative_prompt, request.styles, p.all_seeds,
                                             self.prompt_env, options, self.output.result.notes)
        p.setup_prompts(prompts, negatives)
        if scripts is not None:
            scripts.process(p)
        _check_lists(p)
        images: list[Image.Image] = []
        infotexts: list[str] = []
        for n in range(p.n_iter):
            if self.interrupted:
                break
            batch = self._batch(p, n, model, model_file)
            for image, text in batch:
                images.append(image)
                infotexts.append(text)
        processed = Processed(p, images, infotexts, notes=self.output.result.notes)
        processed.interrupted = self.interrupted
        if scripts is not None:
            scripts.postprocess(p, processed)
        return processed

    def _batch(self, p: ProcessingContext, n: int, model, model_file) -> list[tuple[Image.Image, str]]:
        start, end = n * p.batch_size, (n + 1) * p.batch_size
        p.iteration = n
        p.prompts, p.negative_prompts = p.all_prompts[start:end], p.all_negative_prompts[start:end]
        p.seeds, p.subseeds = p.all_seeds[start:end], p.all_subseeds[start:end]
        scripts = p.scripts
        if scripts is not None:
            batch_args = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            scripts.before_process_batch(p, **batch_args)
            scripts.process_batch(p, **batch_args)
        # What the batch hooks left in p.prompts / p.seeds is what gets made (and written in the infotext).
        p.all_prompts[start:end], p.all_negative_prompts[start:end] = p.prompts, p.negative_prompts
        p.all_seeds[start:end], p.all_subseeds[start:end] = p.seeds, p.subseeds
        made: list[tuple[FinishedImage, GenerationRequest]] = []
        runs = _runs(p, start, end)
        self.control.runs_left = len(runs) + (p.n_iter - n - 1)
        for first, count in runs:
            request = self._run_request(p, first, count)

            def collect(finished: FinishedImage, request: GenerationRequest = request, first: int = first) -> None:
                made.append((replace(finished, index=first + finished.index), request))

            on_sampling = (lambda start: self._before_sampling(p, start)) if scripts is not None else None
            result = generate(request, model, self.control, self.hooks, collect, self.prompt_env, on_sampling)
            p.is_hr_pass = False
            self._merge(result)
            self.control.runs_left -= 1
            if result.interrupted:
                self.interrupted = True
                break
        return self._finish_batch(p, n, made, model_file)

    @staticmethod
    def _before_sampling(p: ProcessingContext, start: SamplingStart) -> None:
        """A1111's order before a pass: before_hr (the hires pass only), then process_before_every_sampling."""
        p.is_hr_pass = start.pass_name == "hires"
        if p.scripts is None:
            return
        if p.is_hr_pass:
            p.scripts.before_hr(p)
        p.scripts.process_before_every_sampling(p, x=start.x, noise=start.noise, c=start.cond, uc=start.uncond)

    def _run_request(self, p: ProcessingContext, first: int, count: int) -> GenerationRequest:
        """One processing run for images first..first+count of the job, all with the same prompts."""
        base = p.to_request()
        init = base.init_images
        return base.copy(prompt=p.all_prompts[first], negative_prompt=p.all_negative_prompts[first], styles=[],
                         seed=p.all_seeds[first], subseed=p.all_subseeds[first], batch_size=count, n_iter=1,
                         init_images=[init[(first + i) % len(init)] for i in range(count)] if init else [],
                         script_name=None, script_args=[], alwayson_scripts={})

    def _merge(self, result: GenerationResult) -> None:
        notes = self.output.result.notes
        notes.extend(note for note in result.notes if note not in notes)
        self.output.result.extra_params.update(result.extra_params)

    def _finish_batch(self, p: ProcessingContext, n: int, made: list[tuple[FinishedImage, GenerationRequest]],
                      model_file) -> list[tuple[Image.Image, str]]:
        scripts = p.scripts
        pictures = [finished.image for finished, _ in made]
        if scripts is not None and pictures:
            pictures, made = self._postprocess_batch(p, n, made, pictures)
        kept = []
        for k, ((finished, request), image) in enumerate(zip(made, pictures)):
            p.batch_index = k
            if scripts is not None:
                pp = PostprocessImageArgs(image)
                scripts.postprocess_image(p, pp)
                image = pp.image
            finished = replace(finished, image=image)
            text = self.engine.infotext(request, finished, model_file=model_file, extra=p.extra_generation_params)
            self.engine.keep_image(self.output, request, image, text, finished.seed, self.errors, p)
            kept.append((image, text))
        return kept

    @staticmethod
    def _postprocess_batch(p: ProcessingContext, n: int, made: list[tuple[FinishedImage, GenerationRequest]],
                           pictures: list[Image.Image]) -> tuple[list[Image.Image], list]:
        """postprocess_batch (the batch as one tensor), then postprocess_batch_list (as a list, which scripts may
        shorten or lengthen). Images are converted back only when a hook changed something, so untouched
        images keep their exact pixels."""
        tensor = images_to_tensor(pictures)
        before = tensor.clone()
        p.scripts.postprocess_batch(p, tensor, batch_number=n)
        if tensor.shape != before.shape or not torch.equal(tensor, before):
            pictures, before = tensor_to_images(tensor), tensor.clone()
        rows = list(tensor)
        pp = PostprocessBatchListArgs(list(rows))
        p.scripts.postprocess_batch_list(p, pp, batch_number=n)
        if (len(pp.images) == len(rows) and all(a is b for a, b in zip(pp.images, rows))
                and torch.equal(tensor, before)):
            return pictures, made
        images = [_to_image(item) for item in pp.images]
        if len(images) == len(made):
            return images, made
        return images, [_entry_for(p, n, made, k) for k in range(len(images))]

    def _hand_back(self, processed: Processed) -> None:
        """The job's output is what the last process_images (or the selected script) returned."""
        out = self.output
        first = max(0, int(processed.index_of_first_image or 0))
        if first and processed.images:
            out.grid = processed.images[0]
        # Images a script appended in postprocess (A1111's way) come past the infotexts: they are handed back
        # and shown, but were never saved (JobOutput).
        out.images = list(processed.images[first:])
        out.infotexts = list(processed.infotexts[first:]) or out.infotexts[:len(out.images)]
        result = out.result
        result.images = list(out.images)
        result.seeds, result.subseeds = list(processed.all_seeds), list(processed.all_subseeds)
        result.prompts, result.negative_prompts = list(processed.all_prompts), list(processed.all_negative_prompts)
        result.extra_params.update(processed.extra_generation_params)
        result.interrupted = self.interrupted or bool(getattr(processed, "interrupted", False))


def _check_lists(p: ProcessingContext) -> None:
    total = p.batch_size * p.n_iter
    for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
        if len(getattr(p, name) or ()) < total:
            raise ScriptError(f"p.{name} has {len(getattr(p, name) or ())} entries, but the job makes {total} "
                              f"images (batch_size {p.batch_size} × n_iter {p.n_iter})")


def _runs(p: ProcessingContext, start: int, end: int) -> list[tuple[int, int]]:
    """(first index, count) for each run of images in start..end that one request can make: the same prompt
    and negative prompt, seeds and subseeds counting up by one."""
    runs: list[tuple[int, int]] = []
    for i in range(start, end):
        if runs:
            first, count = runs[-1]
            last = first + count - 1
            if (p.all_prompts[i] == p.all_prompts[first] and p.all_negative_prompts[i] == p.all_negative_prompts[first]
                    and p.all_seeds[i] == (p.all_seeds[last] + 1) % MAX_SEED
                    and p.all_subseeds[i] == (p.all_subseeds[last] + 1) % MAX_SEED):
                runs[-1] = (first, count + 1)
                continue
        runs.append((i, 1))
    return runs


def _entry_for(p: ProcessingContext, n: int, made: list[tuple[FinishedImage, GenerationRequest]],
               k: int) -> tuple[FinishedImage, GenerationRequest]:
    """Image k of a batch whose length postprocess_batch_list changed: as in A1111, its prompt and seed are
    p.prompts[k], p.seeds[k], ... (the script's to keep right), else those of the k-th (or last) image made."""
    finished, request = made[min(k, len(made) - 1)]

    def pick(values: Any, fallback: Any) -> Any:
        return values[k] if isinstance(values, list) and k < len(values) else fallback

    return replace(finished, index=n * p.batch_size + k, prompt=pick(p.prompts, finished.prompt),
                   negative_prompt=pick(p.negative_prompts, finished.negative_prompt),
                   seed=pick(p.seeds, finished.seed), subseed=pick(p.subseeds, finished.subseed)), request


def _to_image(item: Any) -> Image.Image:
    """An entry of pp.images: a PIL image, a float tensor/array [3, H, W] in 0..1, or a uint8 array [H, W, 3]."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return Image.fromarray(item).convert("RGB")
    tensor = torch.as_tensor(item)
    if tensor.ndim == 3 and tensor.shape[0] not in (1, 3) and tensor.shape[-1] in (1, 3):
        tensor = tensor.permute(2, 0, 1)  # [H, W, C] floats
    return tensor_to_images(tensor.expand(3, -1, -1)[None] if tensor.shape[0] == 1 else tensor[None])[0]


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """A1111's decoded batch: float [B, 3, H, W] in 0..1."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(tensor: Any) -> list[Image.Image]:
    pixels = (torch.as_tensor(tensor).float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).cpu().numpy()]


class _RunControl:
    """The job's GenerationControl, shared by the job's processing runs. Each run sets `total` to its own
    steps; the job's total is the steps done plus that many for every run still to come."""

    def __init__(self, control: Any):
        object.__setattr__(self, "_control", control)
        object.__setattr__(self, "runs_left", 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._control, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "runs_left":
            object.__setattr__(self, name, value)
        elif name == "total":
            self._control.total = self._control.step + value * max(1, self.runs_left)
        else:
            setattr(self._control, name, value)


def process_images(p: ProcessingContext) -> Processed:
    """A1111's process_images(p). Inside a job (a selected script's run(), another script's hook) it runs
    right there, with the job's model and scripts. Elsewhere (an extension's API route or UI handler) it
    submits `p.to_request()` to the engine's queue and waits: `p`'s per-image lists don't travel then."""
    job = current()
    if job is not None:
        return job.process_images(p)
    from modules.compat import host

    engine = host.engine()
    if engine is None:
        raise RuntimeError("process_images needs a running app (extensions are loaded with one)")
    if threading.current_thread().name == "atelier-jobs":
        raise RuntimeError("process_images was called on the job worker outside a job; it would wait for itself")
    done = engine.generate(p.to_request())
    if done.error:
        raise RuntimeError(done.error)
    output = done.result
    p.all_prompts, p.all_negative_prompts = output.result.prompts, output.result.negative_prompts
    p.all_seeds, p.all_subseeds = output.result.seeds, output.result.subseeds
    processed = Processed(p, list(output.images), list(output.infotexts), notes=output.result.notes)
    processed.interrupted = output.result.interrupted
    return processed
