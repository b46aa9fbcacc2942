"""Changing what the UNet's attention layers read for their keys and values (hypernetworks and the like).

Every attention layer computes `key = to_k(context)` and `value = to_v(context)`, where `context` is the text
conditioning in cross-attention (`attn2`) and the image features themselves in self-attention (`attn1`), as in
A1111's CrossAttention. An owner sets a hook `hook(context, which, layer) -> context` (`which` is "k" or "v")
that runs on that input before the projection; several owners' hooks run in the order they were set.
Setting None for an owner takes its hook away; with no hooks left the layers are exactly as they were.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of the UNet, as a hook sees it."""

    name: str  # module path in the UNet, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    is_cross: bool  # True: reads the text conditioning (attn2); False: self-attention (attn1)
    context_dim: int  # width of the context that to_k / to_v read


KVHook = Callable[[torch.Tensor, str, AttentionLayer], torch.Tensor]


class _UnetHooks:
    def __init__(self) -> None:
        self.hooks: dict[str, KVHook] = {}
        self.handles: list[Any] = []


_states: "weakref.WeakKeyDictionary[torch.nn.Module, _UnetHooks]" = weakref.WeakKeyDictionary()
_lock = threading.RLock()


def attention_layers(unet: torch.nn.Module) -> list[tuple[AttentionLayer, torch.nn.Module]]:
    """Every attention layer with a to_k/to_v projection, in module order."""
    from diffusers.models.attention_processor import Attention

    found = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and isinstance(getattr(module, "to_k", None), torch.nn.Linear):
            found.append((AttentionLayer(name, bool(module.is_cross_attention), module.to_k.in_features), module))
    return found


def set_attention_kv_hook(model: Any, owner: str, hook: Optional[KVHook]) -> None:
    """Give `owner` this hook on every attention layer's key/value input (None: take it away)."""
    unet = model.unet
    with _lock:
        state = _states.get(unet)
        if hook is None:
            if state is None or owner not in state.hooks:
                return
            del state.hooks[owner]
            if not state.hooks:
                for handle in state.handles:
                    handle.remove()
                _states.pop(unet, None)
            return
        if state is None:
            state = _states[unet] = _UnetHooks()
            for layer, module in attention_layers(unet):
                for which, projection in (("k", module.to_k), ("v", module.to_v)):
                    state.handles.append(projection.register_forward_pre_hook(_pre_hook(state, which, layer)))
        state.hooks[owner] = hook


def attention_kv_hooks(model: Any) -> list[str]:
    """The owners whose hooks are set on this model, in the order they run."""
    state = _states.get(model.unet)
    return list(state.hooks) if state else []


def _pre_hook(state: _UnetHooks, which: str, layer: AttentionLayer):
    def run(_module: torch.nn.Module, args: tuple) -> Optional[tuple]:
        if not args or not state.hooks:
            return None
        context = args[0]
        for hook in list(state.hooks.values()):
            context = hook(context, which, layer)
        return (context, *args[1:])

    return run
