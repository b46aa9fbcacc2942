"""LoRA (and LoCon, LoHa, LoKr) through `<lora:name:weight>` prompt tags, as A1111's built-in Lora extension.

Tag arguments (A1111's rules): `<lora:name>` (weight 1), `<lora:name:w>` (text encoder and UNet at w),
`<lora:name:te_w:unet_w>`, `<lora:name:te_w:unet_w:dyn>`, or by name: `te=`, `unet=`, `dyn=` (a rank limit).
While a job runs, each LoRA's deltas are added to the weights they touch (only those); when it ends, the
original tensors are put back, so the next job without the LoRA makes the same pixels as before it.
Writes `Lora hashes: "name: hash, ..."` into the infotext; pasting such an infotext renames each tag to the
local file with that hash.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import lora_weights
from lora_library import LoraLibrary

from modules import extension_api as api

log = logging.getLogger(__name__)

OWNER = "lora"

api.register_settings("Lora", {
    "lora_preferred_name": api.setting("Alias from file", "When adding to prompt, refer to Lora by",
                                       choices=["Alias from file", "Filename"]),
    "lora_add_hashes_to_infotext": api.setting(True, "Add Lora hashes to infotext"),
    "lora_in_memory_limit": api.setting(0, "Number of Lora files to keep cached in memory", minimum=0, maximum=100),
})

library = LoraLibrary(lambda: api.model_dir("Lora"))


def _number(value: Any, what: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"LoRA '{name}': {what} {value!r} is not a number") from None


def parse_params(params: api.ExtraNetworkParams) -> tuple[str, float, float, Optional[int]]:
    """(name, te multiplier, unet multiplier, dyn) by A1111's rules."""
    if not params.positional:
        raise ValueError("a <lora:...> tag needs a LoRA name")
    name = params.positional[0]
    te = _number(params.positional[1], "weight", name) if len(params.positional) > 1 else 1.0
    te = _number(params.named.get("te", te), "te", name)
    unet = _number(params.positional[2], "unet weight", name) if len(params.positional) > 2 else te
    unet = _number(params.named.get("unet", unet), "unet", name)
    dyn = params.positional[3] if len(params.positional) > 3 else None
    dyn = params.named.get("dyn", dyn)
    return name, te, unet, (int(_number(dyn, "dyn", name)) if dyn is not None else None)


class LoraNetworks(api.ExtraNetworkHandler):
    def __init__(self) -> None:
        self._active: Optional[tuple] = None  # (model id, what is applied) while a job has LoRAs on

    def activate(self, context: api.ExtraNetworkContext, params_list: list[api.ExtraNetworkParams]) -> None:
        wanted = []
        for params in params_list:
            try:
                name, te, unet, dyn = parse_params(params)
            except ValueError as e:
                context.warn(str(e))
                continue
            found = library.find(name)
            if found is None:
                context.warn(f"LoRA '{name}' not found in {api.model_dir('Lora')}; the tag was ignored")
                continue
            wanted.append((name, found, te, unet, dyn))
        if not wanted:
            self._clear(context)
            return
        key = (id(context.model), tuple((f.path, f.mtime, te, unet, dyn) for _, f, te, unet, dyn in wanted))
        if key != self._active:
            self._apply(context, wanted)
            self._active = key
        if api.get_setting("lora_add_hashes_to_infotext"):
            hashes = [f"{name.replace(':', '').replace(',', '')}: {f.shorthash}" for name, f, *_ in wanted]
            context.extra_params["Lora hashes"] = ", ".join(dict.fromkeys(hashes))

    def _apply(self, context: api.ExtraNetworkContext, wanted: list) -> None:
        model = context.model
        index = lora_weights.module_index(api.model_components(model))
        keep = int(api.get_setting("lora_in_memory_limit") or 0)
        total: dict = {}
        for name, f, te, unet, dyn in wanted:
            try:
                tensors = library.tensors(f, keep)
            except Exception as e:
                context.warn(f"LoRA '{name}' can't be read: {e}")
                continue
            deltas, report = lora_weights.lora_deltas(tensors, index, te, unet, dyn)
            _report(context, name, report)
            lora_weights.add_deltas(total, deltas)
        api.set_weight_deltas(model, OWNER, total)

    def _clear(self, context: api.ExtraNetworkContext) -> None:
        context.extra_params.pop("Lora hashes", None)
        if self._active is not None:
            api.clear_weight_deltas(context.model, OWNER)
            self._active = None

    def deactivate(self, context: api.ExtraNetworkContext) -> None:
        """The job is over: the model gets its own weights back."""
        api.clear_weight_deltas(context.model, OWNER)
        self._active = None


def _report(context: api.ExtraNetworkContext, name: str, report: lora_weights.DeltaReport) -> None:
    if report.matched == 0:
        context.warn(f"LoRA '{name}' has no layer this model has (made for another model family?); it did nothing")
        return
    if report.unmatched:
        context.warn(f"LoRA '{name}': {len(report.unmatched)} of its layers are not in this model and were "
                     f"skipped (e.g. {report.unmatched[0]})")
    if report.wrong_shape:
        context.warn(f"LoRA '{name}': {len(report.wrong_shape)} layers don't fit this model's shapes "
                     f"(e.g. {report.wrong_shape[0]})")
    for kind, count in report.unsupported.items():
        context.warn(f"LoRA '{name}': {count} layers of type {kind} are not supported and were skipped")


def cards() -> list[api.ExtraNetworkCard]:
    found = []
    for f in library.refresh():
        user = f.user_metadata()
        weight = user.get("preferred weight") or 1
        tag = f"<lora:{library.preferred_name(f)}:{weight}>"
        if user.get("activation text"):
            tag += " " + str(user["activation text"])
        found.append(api.card_for_file(
            "lora", f.path, tag=tag, description=str(user.get("description") or ""),
            search_terms=[f.name, f.alias, str(f.path.relative_to(api.model_dir("Lora")))],
            metadata={"alias": f.alias, "sd_version": f.sd_version, "training": f.metadata}))
    return found


def infotext_pasted(infotext: str, params: dict) -> None:
    """A1111's rule: each tag named in `Lora hashes` is renamed to the local file with that hash."""
    hashes_text = params.get("Lora hashes")
    if not hashes_text:
        return
    hashes = {}
    for item in str(hashes_text).split(","):
        alias, _, shorthash = item.strip().partition(":")
        if shorthash.strip():
            hashes[alias.strip()] = shorthash.strip()

    def rename(name: str) -> Optional[str]:
        shorthash = hashes.get(name)
        found = library.find_by_hash(shorthash) if shorthash else None
        return library.preferred_name(found) if found is not None else None

    for key in ("Prompt", "Negative prompt"):
        if isinstance(params.get(key), str):
            params[key] = lora_weights.rename_tags(params[key], rename)


api.register_extra_network("lora", LoraNetworks())
api.register_extra_network_cards("lora", cards)
api.register_api_list("loras", library.api_list, refresh=library.refresh)
api.on_infotext_pasted(infotext_pasted)
