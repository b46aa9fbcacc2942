"""How the original (LDM / A1111) checkpoint layout names the UNet's modules, against diffusers' names.

One map serves both directions: LoRA files name layers the LDM way, and the test models are written in
that layout. (Loading checkpoints uses diffusers' own converter, which goes the other way.)
"""
from __future__ import annotations


def ldm_unet_prefixes(config) -> dict[str, str]:
    """diffusers UNet module prefix → LDM (A1111 checkpoint) prefix, each ending in ".".

    LDM numbers the UNet as flat sequences: input_blocks.0 is conv_in, then per level `layers_per_block`
    (resnet[, attention]) entries and one downsampler entry; output_blocks have layers_per_block + 1 entries
    per level, the last carrying the upsampler at .1 (no attention) or .2 (after the attention)."""
    per_level = config["layers_per_block"] + 1
    levels = len(config["block_out_channels"])
    m = {
        "conv_in.": "input_blocks.0.0.", "conv_out.": "out.2.", "conv_norm_out.": "out.0.",
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
        "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for b in range(levels):
        for j in range(per_level - 1):
            i = 1 + b * per_level + j
            m[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{i}.0."
            m[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
        m[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{(b + 1) * per_level}.0.op."
        for j in range(per_level):
            i = b * per_level + j
            m[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{i}.0."
            m[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{i}.1."
        upsampler = 2 if "CrossAttn" in config["up_block_types"][b] else 1  # after the attention, if any
        m[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{b * per_level + per_level - 1}.{upsampler}.conv."
    return m
