"""Cheap live previews: a fixed linear map from latent channels to RGB (no VAE decode).

The coefficients are the widely used least-squares fits for the SD1/SD2 and SDXL latent spaces.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_SD_COEFS = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])
_SDXL_COEFS = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                            [-0.3730, -0.2499, -0.2088]])


def cheap_preview(latent: torch.Tensor, sdxl: bool = False) -> Image.Image:
    """One latent [C, H, W] → a small PIL image (H×W, the latent's own size)."""
    coefs = _SDXL_COEFS if sdxl else _SD_COEFS
    rgb = torch.einsum("lxy,lr->rxy", latent[:4].float().cpu(), coefs)
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
