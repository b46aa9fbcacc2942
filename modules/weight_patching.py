"""Changing a loaded model's weights for a while and putting them back exactly (LoRA and the like).

An owner (an extension: "lora", say) gives a delta per weight, named by component and parameter:
`("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight")`. Each touched weight becomes
its original plus the sum of every owner's delta for it, computed in float32 and stored in the weight's dtype.
The original tensor is kept (a reference, not a copy) and put back as it was, the same tensor object, when no
owner touches the weight any more, so a job after the patch gives the same pixels as one before it.
Only the weights named are touched, so patching costs as much as the deltas, not the model.

Components are "unet", "text_encoder" (CLIP-L for SD1/SDXL, OpenCLIP for SD2), "text_encoder_2" (SDXL's
OpenCLIP-G) and "vae"; parameter names are the diffusers/transformers ones (`named_parameters()`).

A delta may be a tensor or a function of no arguments that returns one. A function is called when the weight is
built (and again if another owner's change rebuilds it), so a LoRA keeps only its small factors in memory and
never more than one full-size delta exists at a time.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Mapping, Union

import torch

WeightKey = tuple[str, str]  # (component, parameter name)
Delta = Union[torch.Tensor, Callable[[], torch.Tensor]]


class WeightPatchError(ValueError):
    """A delta names a weight the model doesn't have, or has the wrong shape."""


def model_components(model: Any) -> dict[str, torch.nn.Module]:
    """The named parts of a loaded model that weights can be patched in."""
    parts = {"unet": model.unet, "vae": model.vae}
    for index, encoder in enumerate(model.text_encoders):
        parts["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    return parts


class _ModulePatches:
    """The patch state of one component module: originals of touched weights and each owner's deltas."""

    def __init__(self) -> None:
        self.originals: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, dict[str, Delta]] = {}  # owner -> parameter name -> delta


_states: "weakref.WeakKeyDictionary[torch.nn.Module, _ModulePatches]" = weakref.WeakKeyDictionary()
_lock = threading.RLock()


def set_weight_deltas(model: Any, owner: str, deltas: Mapping[WeightKey, Delta]) -> int:
    """Make `owner`'s deltas these (replacing what it set before) and update the touched weights.

    Returns how many weights changed. Weights that `owner` touched before but not now go back to their
    original (plus other owners' deltas). An unknown weight, or a delta whose number of elements differs from
    the weight's (a matching count is reshaped), raises WeightPatchError and leaves every weight as it was."""
    components = model_components(model)
    by_component: dict[str, dict[str, Delta]] = {}
    for (component, name), delta in deltas.items():
        module = components.get(component)
        if module is None:
            raise WeightPatchError(f"no model component '{component}'; known: {', '.join(components)}")
        param = _parameter(module, name)
        if param is None:
            raise WeightPatchError(f"{component} has no weight '{name}'")
        if isinstance(delta, torch.Tensor):
            _check(component, name, delta, param)
        by_component.setdefault(component, {})[name] = delta
    with _lock:
        previous = {component: dict(_states[module].deltas.get(owner, {}))
                    for component, module in components.items() if module in _states}
        try:
            return _set(components, owner, by_component)
        except WeightPatchError:  # a lazy delta of the wrong size: put the owner's previous deltas back
            _set(components, owner, previous)
            raise


def _set(components: dict[str, torch.nn.Module], owner: str, by_component: dict[str, dict[str, Delta]]) -> int:
    changed = 0
    for component, module in components.items():
        new = by_component.get(component, {})
        state = _states.get(module)
        if state is None:
            if not new:
                continue
            state = _states[module] = _ModulePatches()
        touched = set(state.deltas.get(owner, {})) | set(new)
        if new:
            state.deltas[owner] = new
        else:
            state.deltas.pop(owner, None)
        try:
            for name in touched:
                _apply(module, state, name, component)
                changed += 1
        finally:
            if not state.originals and not state.deltas:
                _states.pop(module, None)
    return changed


def _check(component: str, name: str, delta: torch.Tensor, param: torch.Tensor) -> None:
    if delta.numel() != param.numel():
        raise WeightPatchError(f"{component}.{name}: delta of shape {tuple(delta.shape)} doesn't fit the "
                               f"weight's {tuple(param.shape)}")


def clear_weight_deltas(model: Any, owner: str) -> int:
    """Take away everything `owner` added; weights nobody else patches get their original tensors back."""
    return set_weight_deltas(model, owner, {})


def patched_weights(model: Any) -> dict[str, list[WeightKey]]:
    """Which weights each owner patches now: {owner: [(component, parameter name), ...]}."""
    found: dict[str, list[WeightKey]] = {}
    with _lock:
        for component, module in model_components(model).items():
            state = _states.get(module)
            for owner, deltas in (state.deltas.items() if state else ()):
                found.setdefault(owner, []).extend((component, name) for name in deltas)
    return found


def _parameter(module: torch.nn.Module, name: str) -> "torch.nn.Parameter | None":
    holder_name, _, attr = name.rpartition(".")
    try:
        holder = module.get_submodule(holder_name) if holder_name else module
    except AttributeError:
        return None
    param = holder._parameters.get(attr)
    return param


def _apply(module: torch.nn.Module, state: _ModulePatches, name: str, component: str) -> None:
    """Set one weight to its original plus the sum of all owners' deltas (or the original itself)."""
    param = _parameter(module, name)
    original = state.originals.get(name, param.data)
    parts = [deltas[name] for deltas in state.deltas.values() if name in deltas]
    if not parts:
        if name in state.originals:
            param.data = state.originals.pop(name)  # the very tensor that was there: exact
        return
    total: "torch.Tensor | None" = None
    for delta in parts:
        value = delta() if callable(delta) else delta
        _check(component, name, value, original)
        value = value.to(device=original.device, dtype=torch.float32).reshape(original.shape)
        total = value if total is None else total + value
    patched = torch.empty_like(original)  # same dtype, device and memory format (channels_last stays)
    if original.dtype == torch.float32:
        torch.add(original, total, out=patched)
    else:
        patched.copy_(original.float().add_(total))
    state.originals[name] = original
    param.data = patched
