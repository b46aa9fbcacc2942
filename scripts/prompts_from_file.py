"""Prompts from file or textbox: one job per non-empty line.

A line is a prompt, or A1111's command-line style options:
    --prompt "a red car" --negative_prompt "blurry" --steps 10 --cfg_scale 5 --seed 42 --width 512
Options A1111 knows (`prompt_tags`): sd_model, prompt, negative_prompt, styles, seed, subseed, subseed_strength,
seed_resize_from_w, seed_resize_from_h, sampler_index, sampler_name, batch_size, n_iter, steps, cfg_scale,
width, height, do_not_save_samples, do_not_save_grid (plus restore_faces, tiling, outpath_samples,
outpath_grids, prompt_for_display, which Atelier accepts and ignores). Atelier adds `scheduler`.
As in A1111, a line whose options can't be parsed is used whole as the prompt (the result notes it); an
option whose value is wrong (`--steps ten`, an unknown sampler) is a ValidationError naming the line, raised
before any image is made.
"""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Callable, Sequence

from modules import samplers
from modules.errors import ValidationError
from modules.request import GenerationRequest
from modules.builtin_scripts import JobFailed, ScriptInterrupted, ScriptResult, fix_seed, run_job

if TYPE_CHECKING:
    from modules.engine import Engine

TITLE = "Prompts from file or textbox"


def _bool(text: str) -> bool:
    return text == "true"  # A1111: only the exact word "true" is true


# tag -> (request field or None to ignore, converter)
PROMPT_TAGS: dict[str, tuple[str | None, Callable[[str], Any]]] = {
    "sd_model": ("sd_model", str),
    "outpath_samples": (None, str),
    "outpath_grids": (None, str),
    "prompt_for_display": (None, str),
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "styles": ("styles", str),
    "seed": ("seed", int),
    "subseed_strength": ("subseed_strength", float),
    "subseed": ("subseed", int),
    "seed_resize_from_h": ("seed_resize_from_h", int),
    "seed_resize_from_w": ("seed_resize_from_w", int),
    "sampler_index": ("sampler_index", int),
    "sampler_name": ("sampler_name", str),
    "scheduler": ("scheduler", str),
    "batch_size": ("batch_size", int),
    "n_iter": ("n_iter", int),
    "steps": ("steps", int),
    "cfg_scale": ("cfg_scale", float),
    "width": ("width", int),
    "height": ("height", int),
    "restore_faces": (None, _bool),
    "tiling": (None, _bool),
    "do_not_save_samples": ("do_not_save_samples", _bool),
    "do_not_save_grid": ("do_not_save_grid", _bool),
}


class LineSyntaxError(ValueError):
    """The line isn't `--tag value ...` (A1111 then takes the whole line as the prompt)."""


def parse_line(line: str) -> dict[str, str]:
    """A1111's cmdargs: `--tag value` pairs; --prompt and --negative_prompt take every word up to the next --tag.
    Values stay text here; `line_to_changes` converts them."""
    try:
        args = shlex.split(line)
    except ValueError as e:
        raise LineSyntaxError(str(e)) from None
    pos, found = 0, {}
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise LineSyntaxError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise LineSyntaxError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            words = [args[pos]]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            found[tag] = " ".join(words)
            continue
        if tag not in PROMPT_TAGS:
            raise LineSyntaxError(f"unknown commandline option: {arg}")
        found[tag] = args[pos + 1]
        pos += 2
    return found


def line_to_changes(engine: "Engine", tags: dict[str, str]) -> dict[str, Any]:
    """Request changes for one line's tags; raises ValueError for a value that doesn't fit its tag."""
    changes: dict[str, Any] = {}
    for tag, text in tags.items():
        field, convert = PROMPT_TAGS[tag]
        if field is None:
            continue
        try:
            value = convert(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(convert, "valid")  # type: ignore[call-overload]
            raise ValueError(f"--{tag} must be {kind}, got {text!r}") from None
        if field == "sd_model":
            changes["sd_model"] = engine.models.checkpoints.resolve(value).name
        elif field == "sampler_name":
            changes["sampler_name"] = samplers.resolve_sampler(value)[0].name
        elif field == "sampler_index":
            if not 0 <= value < len(samplers.SAMPLERS):
                raise ValueError(f"--sampler_index must be between 0 and {len(samplers.SAMPLERS) - 1}")
            changes["sampler_name"] = samplers.SAMPLERS[value].name
        elif field == "styles":
            changes["styles"] = [s.strip() for s in value.split(",") if s.strip()]
        else:
            changes[field] = value
    return changes


def _apply(request: GenerationRequest, changes: dict[str, Any], base: GenerationRequest,
           prompt_position: str) -> GenerationRequest:
    changes = dict(changes)
    model = changes.pop("sd_model", None)
    if model is not None:
        changes["override_settings"] = {**request.override_settings, "sd_model_checkpoint": model}
    for field in ("prompt", "negative_prompt"):
        line_text, base_text = changes.get(field), getattr(base, field)
        if line_text and base_text:  # A1111: the line's text goes before (or after) the tab's own
            changes[field] = f"{line_text} {base_text}" if prompt_position == "start" else f"{base_text} {line_text}"
    return request.copy(**changes)


def run_prompts_from_file(engine: "Engine", request: GenerationRequest, prompt_txt: str,
                          checkbox_iterate: bool = False, checkbox_iterate_batch: bool = False,
                          prompt_position: str = "start") -> ScriptResult:
    """One job per line of `prompt_txt`; returns every image (each job's grid first when it has one)."""
    if prompt_position not in ("start", "end"):
        raise ValidationError("prompt_position", f"must be 'start' or 'end', got {prompt_position!r}")
    base = request.validate()
    result = ScriptResult()
    jobs: list[tuple[GenerationRequest, bool]] = []  # (request, the line sets its own seed)
    lines = [line.strip() for line in (prompt_txt or "").splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        tags: dict[str, str] = {"prompt": line}
        if "--" in line:
            try:
                tags = parse_line(line)
            except LineSyntaxError as e:
                result.errors.append(f"line {number}: {e}; the whole line was used as the prompt")
        try:
            job = _apply(base, line_to_changes(engine, tags), base, prompt_position).copy(do_not_save_grid=True)
            job.validate()
        except (ValueError, ValidationError) as e:  # ValidationError is a ValueError too
            raise ValidationError("prompt_txt", f"line {number}: {e}") from None
        jobs.append((job, "seed" in tags))
    if not jobs:
        raise ValidationError("prompt_txt", "no prompts: write one prompt (or --prompt ... line) per line")

    if checkbox_iterate or checkbox_iterate_batch:
        base = fix_seed(base)
    seed = base.seed
    result.seed = seed
    for number, (job, own_seed) in enumerate(jobs, start=1):
        if not own_seed:
            job = job.copy(seed=seed)
        try:
            output = run_job(engine, job)
        except ScriptInterrupted as stop:
            result.interrupted = True
            if stop.output is not None:
                _collect(engine, result, stop.output, job)
            break
        except JobFailed as e:
            result.errors.append(f"job {number} ({job.prompt[:40]!r}): {e}")
            continue
        _collect(engine, result, output, job)
        if checkbox_iterate:
            seed = seed + base.batch_size * base.n_iter
    return result


def _collect(engine: "Engine", result: ScriptResult, output: Any, job: GenerationRequest) -> None:
    if output.grid is not None and engine.option(job, "return_grid") and output.infotexts:
        result.images.append(output.grid)
        result.infotexts.append(output.infotexts[0])
    result.images.extend(output.images)
    result.infotexts.extend(output.infotexts)
    result.paths.extend(output.paths)


def run_from_args(engine: "Engine", request: GenerationRequest, args: Sequence[Any]) -> ScriptResult:
    """A1111's script_args: [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt];
    before 1.7 there was no prompt_position: [checkbox_iterate, checkbox_iterate_batch, prompt_txt]."""
    args = list(args)
    if len(args) == 3:
        args = [args[0], args[1], "start", args[2]]
    if len(args) < 4:
        raise ValidationError("script_args", "expected [checkbox_iterate, checkbox_iterate_batch, prompt_position, "
                                             "prompt_txt]")
    return run_prompts_from_file(engine, request, str(args[3] or ""), bool(args[0]), bool(args[1]),
                                 str(args[2] or "start"))
