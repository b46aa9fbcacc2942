"""Where each kind of file lives. The single source for folder locations (A1111's names)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "tokenizer"


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    embeddings_dir: Path
    hypernetwork_dir: Path
    controlnet_dir: Path
    esrgan_dir: Path
    realesrgan_dir: Path
    dat_dir: Path
    swinir_dir: Path
    hat_dir: Path
    outputs_dir: Path

    @classmethod
    def from_flags(cls, data_dir: Optional[str] = None, ckpt_dir: Optional[str] = None, vae_dir: Optional[str] = None,
                   lora_dir: Optional[str] = None, embeddings_dir: Optional[str] = None,
                   hypernetwork_dir: Optional[str] = None, outputs_dir: Optional[str] = None) -> "Paths":
        root = Path(data_dir).resolve() if data_dir else REPO_ROOT
        models = root / "models"

        def pick(flag: Optional[str], default: Path) -> Path:
            return Path(flag).resolve() if flag else default

        return cls(
            data_dir=root,
            ckpt_dir=pick(ckpt_dir, models / "Stable-diffusion"),
            vae_dir=pick(vae_dir, models / "VAE"),
            lora_dir=pick(lora_dir, models / "Lora"),
            embeddings_dir=pick(embeddings_dir, root / "embeddings"),
            hypernetwork_dir=pick(hypernetwork_dir, models / "hypernetworks"),
            controlnet_dir=models / "ControlNet",
            esrgan_dir=models / "ESRGAN",
            realesrgan_dir=models / "RealESRGAN",
            dat_dir=models / "DAT",
            swinir_dir=models / "SwinIR",
            hat_dir=models / "HAT",
            outputs_dir=pick(outputs_dir, root / "outputs"),
        )

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    @property
    def hash_cache_file(self) -> Path:
        return self.data_dir / "cache.json"

    @property
    def upscaler_dirs(self) -> tuple[Path, ...]:
        """Folders scanned for upscaler models (.pth/.pt/.safetensors), in A1111's names."""
        return (self.esrgan_dir, self.realesrgan_dir, self.dat_dir, self.swinir_dir, self.hat_dir)

    def ensure(self) -> None:
        for folder in (self.ckpt_dir, self.vae_dir, self.lora_dir, self.embeddings_dir, self.hypernetwork_dir,
                       self.controlnet_dir, *self.upscaler_dirs, self.outputs_dir):
            folder.mkdir(parents=True, exist_ok=True)
