"""The checkpoint merger (A1111's "Checkpoint Merger" tab), streamed tensor by tensor.

Methods, as A1111 computes them:
  No interpolation   A
  Weighted sum       A·(1 − M) + B·M
  Add difference     A + (B − C)·M

As in A1111, only keys with "model" in their name are merged (the rest, and every non-float tensor, come from A),
an inpainting A (9 input channels) merges its first 4 channels with a normal B, a VAE can be baked in, weights
can be discarded by regex, and the output carries `sd_merge_recipe` / `sd_merge_models` metadata.

Memory: the output's header is planned from the inputs' headers before any tensor is read, then each output
tensor is computed from one tensor of each input and written at once. Tensors are read with positional reads
into their own buffers (not through a memory map, whose touched pages would stay resident and count against
the process), so peak memory is a few tensors, not the models (bench/merge.py measures it).
Output: always .safetensors, written to a hidden temp file and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from modules.errors import CheckpointError, ValidationError
from modules.safe_loading import SAFETENSORS_DTYPES, read_state_dict, validate_safetensors_header

if TYPE_CHECKING:
    from modules.model_manager import ModelManager

INTERP_METHODS = ("No interpolation", "Weighted sum", "Add difference")
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "keep": None}
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# A1111's checkpoint_dict_skip_on_merge: taken from A, never blended.
SKIP_ON_MERGE = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
Progress = Callable[[int, int], None]  # (tensors done, total)


# --------------------------------------------------------------------------- reading inputs


class TensorSource:
    """One input model, read a tensor at a time.

    .safetensors: the header is validated and each tensor is read into its own buffer with a positional read.
    Pickles (.ckpt) can't be streamed: they're loaded whole (weights_only, memory-mapped where the format allows)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._tensors: Optional[dict[str, torch.Tensor]] = None
        self._file: Optional[Any] = None
        if self.path.suffix.lower() == ".safetensors":
            header = validate_safetensors_header(self.path)
            with open(self.path, "rb") as f:
                self._base = 8 + struct.unpack("<Q", f.read(8))[0]
            self.metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
            for name, info in header.items():
                if info["dtype"] not in SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{self.path.name}: tensor '{name}' has unsupported dtype {info['dtype']}")
            self._header = header
            self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}
            self.dtypes = {k: SAFETENSORS_DTYPES[v["dtype"]] for k, v in header.items()}
            self._file = open(self.path, "rb", buffering=0)
        else:
            self._tensors = read_state_dict(self.path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._tensors.items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str, rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """A tensor, or only rows [start, stop) of its first dimension (read from just those bytes)."""
        if self._tensors is not None:
            tensor = self._tensors[key]
            return tensor if rows is None or tensor.dim() == 0 else tensor[rows[0]:rows[1]]
        info = self._header[key]
        shape = list(info["shape"])
        start, end = info["data_offsets"]
        if rows is not None and shape:
            row_bytes = (end - start) // shape[0] if shape[0] else 0
            start, end = start + rows[0] * row_bytes, start + rows[1] * row_bytes
            shape[0] = rows[1] - rows[0]
        tensor = torch.empty(shape, dtype=SAFETENSORS_DTYPES[info["dtype"]])
        raw = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        self._file.seek(self._base + start)  # type: ignore[union-attr]
        done = 0
        while done < end - start:
            n = self._file.readinto(raw[done:])  # type: ignore[union-attr]
            if not n:
                raise CheckpointError(f"{self.path.name}: tensor '{key}' is cut short (truncated file)")
            done += n
        return tensor

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tensors = None

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- the plan


@dataclass
class MergeResult:
    path: Path
    metadata: dict[str, str]
    merged_keys: int  # tensors that were blended
    copied_keys: int  # tensors taken from A (or the baked VAE) unchanged but for precision
    discarded_keys: int
    is_inpainting: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _mergeable(key: str, a: TensorSource) -> bool:
    return "model" in key and key not in SKIP_ON_MERGE and _is_float(a.dtypes[key])


def _inpainting_pair(shape_a: tuple, shape_b: tuple) -> bool:
    return (len(shape_a) == 4 and len(shape_b) == 4 and shape_a[1] == 9 and shape_b[1] == 4
            and shape_a[0] == shape_b[0] and shape_a[2:] == shape_b[2:])


def _check_compatible(a: TensorSource, other: TensorSource, label: str, keys: list[str]) -> None:
    """Different UNet key sets, or any shape that differs, is a mismatch (except A1111's inpainting case)."""
    unet_a = {k for k in a.keys() if k.startswith(UNET_PREFIX)}
    unet_o = {k for k in other.keys() if k.startswith(UNET_PREFIX)}
    if not unet_o:
        raise CheckpointError(f"model {label} ({other.path.name}) has no UNet weights (model.diffusion_model.*): "
                              f"not a Stable Diffusion checkpoint")
    if unet_a != unet_o:
        only_a, only_o = sorted(unet_a - unet_o), sorted(unet_o - unet_a)
        example = (f"A has {len(only_a)} UNet weights {label} lacks, e.g. {only_a[0]}" if only_a else
                   f"{label} has {len(only_o)} UNet weights A lacks, e.g. {only_o[0]}")
        raise CheckpointError(f"models A ({a.path.name}) and {label} ({other.path.name}) don't match: {example}. "
                              f"Merge checkpoints of the same family (SD1 with SD1, SDXL with SDXL).")
    for key in keys:
        if key not in other:
            continue
        sa, so = a.shapes[key], other.shapes[key]
        if sa != so and not _inpainting_pair(sa, so):
            hint = (" When merging an inpainting model with a normal one, A must be the inpainting model."
                    if len(sa) == 4 and len(so) == 4 and sa[1] == 4 and so[1] == 9 else "")
            raise CheckpointError(f"models A ({a.path.name}) and {label} ({other.path.name}) don't match: "
                                  f"{key} is {list(sa)} in A and {list(so)} in {label}.{hint}")


def _output_name(method: str, a: Path, b: Optional[Path], c: Optional[Path], multiplier: float) -> str:
    """A1111's default file names."""
    if method == "Weighted sum":
        return f"{round(1 - multiplier, 2)}({a.stem}) + {round(multiplier, 2)}({b.stem})"  # type: ignore[union-attr]
    if method == "Add difference":
        return f"{a.stem} + {round(multiplier, 2)}({b.stem} - {c.stem})"  # type: ignore[union-attr]
    return a.stem


def legacy_hash(path: Path) -> str:
    """A1111's old 8-hex model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_config(source: Path, target: Path) -> None:
    for suffix in (".yaml", ".yml", ".config.json"):
        config = source.with_name(source.stem + suffix)
        if config.exists():
            shutil.copyfile(config, target.with_name(target.stem + suffix))


# --------------------------------------------------------------------------- merging


def merge_checkpoints(primary: Path, secondary: Optional[Path] = None, tertiary: Optional[Path] = None, *,
                      output_dir: Path, interp_method: str = "Weighted sum", multiplier: float = 0.3,
                      precision: str = "fp16", custom_name: str = "", config_source: str = "A, B or C",
                      bake_in_vae: Optional[Path] = None, discard_weights: str = "", save_metadata: bool = True,
                      add_merge_recipe: bool = True, copy_metadata_fields: bool = True,
                      metadata_json: str = "", sha256_of: Optional[Callable[[Path], str]] = None,
                      progress: Optional[Progress] = None) -> MergeResult:
    """Merge checkpoint files into `output_dir/<name>.safetensors`; A1111's Checkpoint Merger, streamed.

    precision: "fp16" (A1111's "Save as float16"), "bf16", "fp32" or "keep" (each tensor as A stores it).
    config_source: whose sibling config (`<stem>.yaml` / `<stem>.config.json`) goes beside the output.
    Raises ValidationError for bad arguments and CheckpointError for unreadable or mismatched models, before
    anything is written."""
    started = time.monotonic()
    _check_arguments(interp_method, precision, config_source, multiplier, secondary, tertiary)
    discard = _discard_pattern(discard_weights)
    user_metadata = _user_metadata(metadata_json) if save_metadata else {}
    primary = Path(primary)
    secondary = Path(secondary) if interp_method != "No interpolation" and secondary is not None else None
    tertiary = Path(tertiary) if interp_method == "Add difference" and tertiary is not None else None
    sources: list[TensorSource] = []
    try:
        a = _open_source(primary, sources)
        b = _open_source(secondary, sources) if secondary is not None else None
        c = _open_source(tertiary, sources) if tertiary is not None else None
        vae = _read_vae(bake_in_vae) if bake_in_vae else {}

        keys = [k for k in a.keys() if not (discard and discard.search(k))]
        discarded = len(a.keys()) - len(keys)
        if not keys:
            raise ValidationError("discard_weights", "the regular expression discards every weight")
        merged = [k for k in keys if _mergeable(k, a) and b is not None and k in b]
        _check_inputs(a, b, c, merged, vae, bake_in_vae)
        is_inpainting = any(b is not None and _inpainting_pair(a.shapes[k], b.shapes[k]) for k in merged)

        name = custom_name.strip() or _output_name(interp_method, primary, secondary, tertiary, multiplier)
        target = _target_path(Path(output_dir), name, is_inpainting, sources)
        metadata = _metadata(sources, save_metadata, copy_metadata_fields, add_merge_recipe, user_metadata,
                             interp_method, multiplier, precision, custom_name, config_source, bake_in_vae,
                             discard_weights, is_inpainting, sha256_of or file_sha256)
        blend = _Blend(a, b, c, vae, merged, multiplier, PRECISIONS[precision])
        _write_safetensors(target, keys, {k: a.shapes[k] for k in keys}, blend.dtype_of, blend.compute, metadata,
                           progress)
    finally:
        for source in sources:
            source.close()

    _copy_chosen_config(config_source, primary, secondary, tertiary, target)
    return MergeResult(target, metadata, merged_keys=len(merged), copied_keys=len(keys) - len(merged),
                       discarded_keys=discarded, is_inpainting=is_inpainting, seconds=time.monotonic() - started)


def _check_arguments(interp_method: str, precision: str, config_source: str, multiplier: float,
                     secondary: Optional[Path], tertiary: Optional[Path]) -> None:
    """Bad arguments fail here, before any model is opened."""
    if interp_method not in INTERP_METHODS:
        raise ValidationError("interp_method", f"must be one of {', '.join(INTERP_METHODS)}, got {interp_method!r}")
    if precision not in PRECISIONS:
        raise ValidationError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if config_source not in CONFIG_SOURCES:
        raise ValidationError("config_source", f"must be one of {', '.join(CONFIG_SOURCES)}")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier != multiplier:
        raise ValidationError("multiplier", f"must be a number, got {multiplier!r}")
    if interp_method != "No interpolation" and secondary is None:
        raise ValidationError("secondary_model_name", f"{interp_method} needs a secondary model (B)")
    if interp_method == "Add difference" and tertiary is None:
        raise ValidationError("tertiary_model_name", "Add difference needs a tertiary model (C)")


def _discard_pattern(discard_weights: str) -> Optional[re.Pattern]:
    try:
        return re.compile(discard_weights) if discard_weights else None
    except re.error as e:
        raise ValidationError("discard_weights", f"not a valid regular expression ({e})") from None


def _user_metadata(metadata_json: str) -> dict[str, Any]:
    if not metadata_json.strip():
        return {}
    try:
        user_metadata = json.loads(metadata_json)
    except ValueError as e:
        raise ValidationError("metadata_json", f"not valid JSON ({e})") from None
    if not isinstance(user_metadata, dict):
        raise ValidationError("metadata_json", "must be a JSON object")
    return user_metadata


def _open_source(path: Path, sources: list[TensorSource]) -> TensorSource:
    """Open `path` and add it to `sources`, which the caller closes (so a later failure closes it too)."""
    source = TensorSource(path)
    sources.append(source)
    return source


def _check_inputs(a: TensorSource, b: Optional[TensorSource], c: Optional[TensorSource], merged: list[str],
                  vae: dict[str, torch.Tensor], bake_in_vae: Optional[Path]) -> None:
    """B and C must match A (and each other) on the merged keys, and a baked VAE must fit A."""
    if b is not None:
        _check_compatible(a, b, "B", merged)
    if c is not None:
        _check_compatible(a, c, "C", [k for k in merged if k in c])
        for k in merged:
            if k in c and c.shapes[k] != b.shapes[k]:  # type: ignore[union-attr]
                raise CheckpointError(f"models B and C don't match: {k} is "
                                      f"{list(b.shapes[k])} in B and {list(c.shapes[k])} in C")  # type: ignore
    for key, tensor in vae.items():
        if key in a and a.shapes[key] != tuple(tensor.shape):
            raise CheckpointError(f"{Path(bake_in_vae).name}: not a VAE for this model ({key} is "  # type: ignore
                                  f"{list(tensor.shape)}, the model's is {list(a.shapes[key])})")


def _target_path(output_dir: Path, name: str, is_inpainting: bool, sources: list[TensorSource]) -> Path:
    """`output_dir/<name>.safetensors`; the name must be a plain file name and not overwrite an input."""
    if any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValidationError("custom_name", f"must be a plain file name, got {name!r}")
    name += ".inpainting" if is_inpainting else ""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name}.safetensors"
    if target.resolve() in {s.path.resolve() for s in sources}:
        raise ValidationError("custom_name", f"{target.name} is one of the models being merged; pick another name")
    return target


@dataclass
class _Blend:
    """Each output tensor: A, the baked VAE's, or A blended with B (and C), cast to the output precision."""
    a: TensorSource
    b: Optional[TensorSource]
    c: Optional[TensorSource]
    vae: dict[str, torch.Tensor]
    merged: list[str]
    multiplier: float
    out_dtype: Optional[torch.dtype]  # None: keep each tensor's own dtype

    def dtype_of(self, key: str) -> torch.dtype:
        stored = self.vae[key].dtype if key in self.vae else self.a.dtypes[key]
        return self.out_dtype if self.out_dtype is not None and _is_float(stored) else stored

    def compute(self, key: str, rows: tuple[int, int]) -> torch.Tensor:
        """Rows [start, stop) of the output tensor, with A1111's arithmetic in fp32, in place where it can be."""
        if key in self.vae:
            tensor = self.vae[key]
            return tensor if tensor.dim() == 0 else tensor[rows[0]:rows[1]]
        if key not in self.merged:
            return self.a.get(key, rows)
        c, multiplier = self.c, self.multiplier
        out = self.a.get(key, rows).to(torch.float32, copy=True)
        other = self.b.get(key, rows).to(torch.float32, copy=True)  # type: ignore[union-attr]
        if c is not None:  # Add difference: A + (B - C)·M; A1111 leaves A alone where C lacks the key
            if key in c:
                other.sub_(c.get(key, rows).float()).mul_(multiplier)
            else:
                other.zero_()
            target_part = out if out.shape == other.shape else out[:, 0:4]
            target_part.add_(other)
        else:  # Weighted sum: A·(1 − M) + B·M
            target_part = out if out.shape == other.shape else out[:, 0:4]  # inpainting A: 4 of 9 channels
            target_part.mul_(1 - multiplier).add_(other.mul_(multiplier))
        return out


def _copy_chosen_config(config_source: str, primary: Path, secondary: Optional[Path], tertiary: Optional[Path],
                        target: Path) -> None:
    """Copy the first chosen input's sibling config beside the output."""
    if config_source == "Don't":
        return
    chosen = {"A, B or C": [primary, secondary, tertiary], "B": [secondary], "C": [tertiary]}[config_source]
    for source_path in chosen:
        if source_path is not None and any(source_path.with_name(source_path.stem + s).exists()
                                           for s in (".yaml", ".yml", ".config.json")):
            _copy_config(source_path, target)
            break


def _read_vae(path: Path) -> dict[str, torch.Tensor]:
    """A VAE file's tensors keyed as they sit in a checkpoint (`first_stage_model.*`); loss/EMA weights dropped."""
    state = read_state_dict(Path(path))
    out = {}
    for key, tensor in state.items():
        if key.startswith(("loss", "model_ema")):
            continue
        out[key if key.startswith(VAE_PREFIX) else VAE_PREFIX + key] = tensor
    if not any(k.startswith(VAE_PREFIX + "decoder.") for k in out):
        raise CheckpointError(f"{Path(path).name}: not a VAE in LDM layout (no decoder.* weights)")
    return out


def _metadata(sources: list[TensorSource], save_metadata: bool, copy_fields: bool, add_recipe: bool,
              user: dict[str, Any], method: str, multiplier: float, precision: str, custom_name: str,
              config_source: str, bake_in_vae: Optional[Path], discard: str, is_inpainting: bool,
              sha256_of: Callable[[Path], str]) -> dict[str, str]:
    """A1111's merge metadata: the inputs' own fields, the user's JSON, `format`, then the recipe."""
    if not save_metadata:
        return {"format": "pt"}
    metadata: dict[str, str] = {}
    if copy_fields:
        for source in sources:
            metadata.update(source.metadata)
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in user.items()})
    metadata["format"] = "pt"
    if add_recipe:
        infos = [(s.path, sha256_of(s.path)) for s in sources]
        while len(infos) < 3:
            infos.append((None, None))  # type: ignore[arg-type]
        recipe = {
            "type": "webui",  # A1111's marker for its built-in merger, kept so tools that read it understand us
            "primary_model_hash": infos[0][1], "secondary_model_hash": infos[1][1],
            "tertiary_model_hash": infos[2][1], "interp_method": method, "multiplier": multiplier,
            "save_as_half": precision == "fp16", "precision": precision, "custom_name": custom_name,
            "config_source": config_source, "bake_in_vae": Path(bake_in_vae).name if bake_in_vae else "None",
            "discard_weights": discard, "is_inpainting": is_inpainting, "is_instruct_pix2pix": False,
            "merged_by": "atelier",
        }
        models: dict[str, Any] = {}
        for source, (path, sha) in zip(sources, infos):
            models[sha] = {"name": path.name, "legacy_hash": legacy_hash(path),
                           "sd_merge_recipe": _json_or_none(source.metadata.get("sd_merge_recipe"))}
            models.update(_json_or_none(source.metadata.get("sd_merge_models")) or {})
        metadata["sd_merge_recipe"] = json.dumps(recipe)
        metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _json_or_none(text: Optional[str]) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


CHUNK_ELEMENTS = 1 << 22  # rows are computed and written in pieces of about this many elements (16 MB in fp32)


def _write_safetensors(target: Path, keys: list[str], shapes: dict[str, tuple], dtype_of: Callable[[str], torch.dtype],
                       compute: Callable[[str, tuple[int, int]], torch.Tensor], metadata: dict[str, str],
                       progress: Optional[Progress]) -> None:
    """Plan the header from shapes and dtypes, then compute and append each tensor in row chunks (so even the
    49408×768 token embedding never sits in memory whole); rename into place when complete."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in keys:
        dtype = dtype_of(key)
        count = 1
        for dim in shapes[key]:
            count *= int(dim)
        size = count * dtype.itemsize
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shapes[key]),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header so tensor data is 8-byte aligned
    temp = target.with_name(f".{target.name}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for index, key in enumerate(keys):
                shape = shapes[key]
                first = int(shape[0]) if shape else 1
                per_row = max(1, math.prod(int(d) for d in shape[1:]))
                step = max(1, CHUNK_ELEMENTS // per_row)
                for start in range(0, first, step) if first else []:
                    stop = min(first, start + step)
                    part = compute(key, (start, stop)).to(dtype_of(key)).contiguous()
                    expected = (stop - start, *shape[1:]) if shape else ()
                    if tuple(part.shape) != tuple(expected):
                        raise CheckpointError(f"internal error: {key} rows {start}:{stop} came out {list(part.shape)}")
                    f.write(memoryview(part.reshape(-1).view(torch.uint8).numpy()))
                    del part
                if progress is not None:
                    progress(index + 1, len(keys))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- by name, for the UI and API


def merge_by_name(models: "ModelManager", primary_model_name: str, secondary_model_name: str = "",
                  tertiary_model_name: str = "", interp_method: str = "Weighted sum", multiplier: float = 0.3,
                  save_as_half: bool = True, custom_name: str = "", checkpoint_format: str = "safetensors",
                  config_source: str = "A, B or C", bake_in_vae: str = "None", discard_weights: str = "",
                  save_metadata: bool = True, add_merge_recipe: bool = True, copy_metadata_fields: bool = True,
                  metadata_json: str = "", precision: Optional[str] = None,
                  progress: Optional[Progress] = None) -> MergeResult:
    """A1111's run_modelmerger arguments, by checkpoint and VAE names; writes into the checkpoint folder and
    refreshes the checkpoint list. `precision` ("fp16"/"bf16"/"fp32"/"keep") wins over `save_as_half`."""
    if checkpoint_format != "safetensors":
        raise ValidationError("checkpoint_format", "only safetensors is written (pickled .ckpt files are unsafe)")
    files = [models.checkpoints.resolve(n) if n else None for n in (primary_model_name, secondary_model_name,
                                                                      tertiary_model_name)]
    paths = [f.path if f else None for f in files]
    by_path = {f.path: f for f in files if f is not None}
    if paths[0] is None:
        raise ValidationError("primary_model_name", "choose a primary model (A)")
    vae_path = None if bake_in_vae in ("", "None", None) else models.vaes.resolve(bake_in_vae).path
    result = merge_checkpoints(paths[0], paths[1], paths[2], output_dir=models.paths.ckpt_dir,
                               interp_method=interp_method, multiplier=multiplier,
                               precision=precision or ("fp16" if save_as_half else "keep"),
                               custom_name=custom_name, config_source=config_source, bake_in_vae=vae_path,
                               discard_weights=discard_weights, save_metadata=save_metadata,
                               add_merge_recipe=add_merge_recipe, copy_metadata_fields=copy_metadata_fields,
                               metadata_json=metadata_json, progress=progress,
                               sha256_of=lambda p: by_path[p].sha256 if p in by_path else file_sha256(p))
    models.refresh()
    return result
