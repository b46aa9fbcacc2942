"""Changing a loaded model's weights for a while and putting them back exactly (LoRA and the like).

An owner (an extension: "lora", say) gives a delta per weight, named by component and parameter:
`("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight")`. Each touched weight becomes
its original plus the sum of every owner's delta for it, computed in float32 and stored in the weight's dtype.
The original tensor is kept (a reference, not a copy) and put back as it was, the same tensor object, when no
owner touches the weight any more, so a job after the patch gives the same pixels as one before it.
Only the weights named are touched, so patching costs as much as the deltas, not the model.

Components are "unet", "text_encoder" (CLIP-L for SD1/SDXL, OpenCLIP for SD2), "text_encoder_2" (SDXL's
OpenCLIP-G) and "vae"; parameter names are the diffusers/transformers ones (`named_parameters()`).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Mapping

import torch

WeightKey = tuple[str, str]  # (component, parameter name)


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
        self.deltas: dict[str, dict[str, torch.Tensor]] = {}  # owner -> parameter name -> delta


_states: "weakref.WeakKeyDictionary[torch.nn.Module, _ModulePatches]" = weakref.WeakKeyDictionary()
_lock = threading.RLock()


def set_weight_deltas(model: Any, owner: str, deltas: Mapping[WeightKey, torch.Tensor]) -> int:
    """Make `owner`'s deltas these (replacing what it set before) and update the touched weights.

    Returns how many weights changed. Weights that `owner` touched before but not now go back to their
    original (plus other owners' deltas). Raises WeightPatchError, before changing anything, for an unknown
    weight or a delta whose number of elements differs from the weight's (a matching count is reshaped)."""
    components = model_components(model)
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for (component, name), delta in deltas.items():
        module = components.get(component)
        if module is None:
            raise WeightPatchError(f"no model component '{component}'; known: {', '.join(components)}")
        param = _parameter(module, name)
        if param is None:
            raise WeightPatchError(f"{component} has no weight '{name}'")
        if delta.numel() != param.numel():
            raise WeightPatchError(f"{component}.{name}: delta of shape {tuple(delta.shape)} doesn't fit the "
                                   f"weight's {tuple(param.shape)}")
        by_component.setdefault(component, {})[name] = delta
    changed = 0
    with _lock:
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
            for name in touched:
                _apply(module, state, name)
                changed += 1
            if not state.originals and not state.deltas:
                _states.pop(module, None)
    return changed


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


def _apply(module: torch.nn.Module, state: _ModulePatches, name: str) -> None:
    """Set one weight to its original plus the sum of all owners' deltas (or the original itself)."""
    param = _parameter(module, name)
    original = state.originals.get(name, param.data)
    parts = [deltas[name] for deltas in state.deltas.values() if name in deltas]
    if not parts:
        if name in state.originals:
            param.data = state.originals.pop(name)  # the very tensor that was there: exact
        return
    state.originals[name] = original
    total = original.float()
    for delta in parts:
        total = total + delta.to(device=original.device, dtype=torch.float32).reshape(original.shape)
    patched = torch.empty_like(original)  # same dtype, device and memory format (channels_last stays)
    patched.copy_(total)
    param.data = patched
