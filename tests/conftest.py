import os

# An accidental hub call must fail loudly, never download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from modules.devices import DevicePolicy  # noqa: E402

CPU_FP32 = DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, False)


@pytest.fixture(scope="session")
def policy() -> DevicePolicy:
    """fp32 on the CPU: exact, repeatable numbers for tests."""
    return CPU_FP32


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A data dir whose models/Stable-diffusion holds one tiny checkpoint per family, built once."""
    from tests.tiny_models import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("data")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    save_tiny_checkpoint(ckpts / "tiny-sd1.safetensors", "sd1")
    save_tiny_checkpoint(ckpts / "tiny-sd2v.safetensors", "sd2-v")
    save_tiny_checkpoint(ckpts / "tiny-sdxl.safetensors", "sdxl")
    save_tiny_checkpoint(ckpts / "tiny-sd1-inpainting.safetensors", "sd1", inpainting=True)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir) -> dict[str, Path]:
    folder = tiny_dir / "models" / "Stable-diffusion"
    return {"sd1": folder / "tiny-sd1.safetensors", "sd2-v": folder / "tiny-sd2v.safetensors",
            "sdxl": folder / "tiny-sdxl.safetensors", "sd1-inpainting": folder / "tiny-sd1-inpainting.safetensors"}


@pytest.fixture(scope="session")
def sd1_model(tiny_ckpt, policy):
    from modules.model_loading import load_checkpoint

    return load_checkpoint(tiny_ckpt["sd1"], policy)
