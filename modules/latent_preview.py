"""Live previews: latents → a small RGB image, by the method the `show_progress_type` setting names (A1111's).

- "Approx cheap": a fixed linear map from latent channels to RGB (no network). The coefficients are the widely
  used least-squares fits for the SD1/SD2 and SDXL latent spaces.
- "TAESD": diffusers' AutoencoderTiny decoder, with weights from `models/VAE-approx/taesd_decoder.*`
  (`taesdxl_decoder.*` for SDXL), .safetensors or .pth. Nothing is downloaded: without the file, the cheap
  preview is used and the log says so once.
- "Full": the model's own VAE (exact, as slow as the final decode).
- "Approx NN": A1111's small VAE-approx network is not shipped here, so it falls back to the cheap preview.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from modules.image_ops import tensor_to_pil

log = logging.getLogger(__name__)

PREVIEW_METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")
APPROX_FOLDER = Path("models") / "VAE-approx"  # under the data dir, as in A1111

_SD_COEFS = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])
_SDXL_COEFS = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                            [-0.3730, -0.2499, -0.2088]])

Previewer = Callable[[torch.Tensor], Image.Image]  # one latent [C, H, W] → image
_warned: set[str] = set()


def cheap_preview(latent: torch.Tensor, sdxl: bool = False) -> Image.Image:
    """One latent [C, H, W] → a small PIL image (H×W, the latent's own size)."""
    coefs = _SDXL_COEFS if sdxl else _SD_COEFS
    rgb = torch.einsum("lxy,lr->rxy", latent[:4].float().cpu(), coefs)
    return _to_image(rgb)


def _to_image(rgb: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] → PIL."""
    array = ((rgb.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def previewer_for(model, method: str, data_dir: Path) -> Previewer:
    """The preview function for `model` under `method`; falls back to the cheap preview when it must."""
    sdxl = model.family.is_sdxl
    cheap = lambda latent: cheap_preview(latent, sdxl)  # noqa: E731
    if method == "Full":
        return lambda latent: _full_preview(model, latent)
    if method == "TAESD":
        found = taesd_file(Path(data_dir) / APPROX_FOLDER, sdxl)
        if found is None:
            name = "taesdxl_decoder" if sdxl else "taesd_decoder"
            _warn_once(f"TAESD previews need {APPROX_FOLDER / name}.safetensors (or .pth); "
                       "using the cheap preview instead")
            return cheap
        decoder = load_taesd_decoder(found, found.stat().st_mtime, model.policy.device, model.policy.vae_dtype)
        return lambda latent: _taesd_preview(decoder, latent)
    if method == "Approx NN":
        _warn_once("the 'Approx NN' preview network is not shipped; using the cheap preview instead")
    return cheap


def _full_preview(model, latent: torch.Tensor) -> Image.Image:
    from modules import vae_codec  # here, not at the top: vae_codec imports the model loader

    return tensor_to_pil(vae_codec.decode(model, latent[None]))[0]


@torch.no_grad()
def _taesd_preview(decoder: torch.nn.Module, latent: torch.Tensor) -> Image.Image:
    param = next(decoder.parameters())
    # TAESD reads the diffusion latents as they are (its scaling factor is 1) and returns [-1, 1].
    return tensor_to_pil(decoder(latent[None, :4].to(param.device, param.dtype)))[0]


def taesd_file(folder: Path, sdxl: bool) -> Optional[Path]:
    stem = "taesdxl_decoder" if sdxl else "taesd_decoder"
    for ext in (".safetensors", ".pth"):
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


@lru_cache(maxsize=2)
def load_taesd_decoder(path: Path, mtime: float, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """AutoencoderTiny's decoder from a TAESD weights file. The config is the real TAESD's (diffusers'
    AutoencoderTiny defaults) unless `<stem>.config.json` beside it says otherwise. `mtime` is in the
    cache key so a replaced file is read again."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderTiny

    from modules.safe_loading import read_state_dict

    config_file = path.with_name(path.stem + ".config.json")
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    with init_empty_weights():  # only the decoder gets weights; the encoder is never built for real
        decoder = AutoencoderTiny.from_config({k: v for k, v in config.items() if not k.startswith("_")}).decoder
    decoder.load_state_dict(taesd_decoder_state(read_state_dict(path)), strict=True, assign=True)
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def taesd_decoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' names for a decoder state dict in any of the layouts seen: a whole AutoencoderTiny
    (`decoder.layers.N…`), its decoder alone (`layers.N…`), or the original taesd_decoder.pth (`N…`, where
    layer 0 is a parameter-free clamp that diffusers does in forward(), so every index is one higher)."""
    if any(k.startswith("decoder.") for k in state):
        return {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    if any(k.startswith("layers.") for k in state):
        return dict(state)
    converted = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        converted[f"layers.{int(index) - 1}.{rest}"] = value
    return converted
