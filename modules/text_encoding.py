"""Prompt text → conditioning tensors, in A1111's 75-token chunks with no length limit.

Each chunk is [start] + 75 tokens + [end] = 77 ids; chunks are encoded separately and concatenated
along the token axis. Token weights (emphasis) multiply the hidden states, then the mean is restored
(A1111's "Original" emphasis). The prompt parser (modules/prompt_parser) supplies weighted pieces;
plain text is one piece of weight 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from modules.model_loading import LoadedModel

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # A1111: on a full chunk, move up to this many tokens after the last comma to the next chunk
BOS, EOS = 49406, 49407
OPENCLIP_PAD = 0


@dataclass
class TokenChunk:
    tokens: list[int]  # without start/end, padded to CHUNK_LENGTH when finished
    weights: list[float]


@dataclass
class Conditioning:
    context: torch.Tensor  # [batch, 77 * chunks, dim]
    pooled: Optional[torch.Tensor] = None  # [batch, dim] (SDXL only)

    def repeat_to(self, length: int) -> "Conditioning":
        """Pad the token axis by repeating the last vector (how A1111 stacks prompts of unequal length)."""
        missing = length - self.context.shape[1]
        if missing <= 0:
            return self
        pad = self.context[:, -1:].expand(-1, missing, -1)
        return Conditioning(torch.cat([self.context, pad], dim=1), self.pooled)


def stack(conds: Sequence[Conditioning]) -> Conditioning:
    length = max(c.context.shape[1] for c in conds)
    padded = [c.repeat_to(length) for c in conds]
    pooled = None if padded[0].pooled is None else torch.cat([c.pooled for c in padded])
    return Conditioning(torch.cat([c.context for c in padded]), pooled)


def chunk_tokens(pieces: Sequence[tuple[list[int], float]], comma_token: int = 267) -> list[TokenChunk]:
    """Split weighted token runs into 75-token chunks. A piece of `None` tokens ([] with weight -1) is BREAK."""
    chunks: list[TokenChunk] = []
    current = TokenChunk([], [])
    last_comma = -1

    def finish() -> None:
        nonlocal current, last_comma
        pad = CHUNK_LENGTH - len(current.tokens)
        current.tokens += [EOS] * pad
        current.weights += [1.0] * pad
        chunks.append(current)
        current = TokenChunk([], [])
        last_comma = -1

    for tokens, weight in pieces:
        if weight == -1 and not tokens:  # BREAK
            finish()
            continue
        for token in tokens:
            if token == comma_token:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_LENGTH and last_comma != -1 and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
                # Keep the words after the last comma together in the next chunk.
                cut = last_comma + 1
                moved_tokens, moved_weights = current.tokens[cut:], current.weights[cut:]
                current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                finish()
                current.tokens, current.weights = moved_tokens, moved_weights
            if len(current.tokens) == CHUNK_LENGTH:
                finish()
            current.tokens.append(token)
            current.weights.append(weight)
    if current.tokens or not chunks:
        finish()
    return chunks


class PromptEncoder:
    """Encodes text for one loaded model (SD1, SD2 or SDXL) with its text encoder(s)."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.tokenizer = model.tokenizer
        self.comma_token = self.tokenizer.convert_tokens_to_ids(",</w>")

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids

    def chunks_for(self, text: str) -> list[TokenChunk]:
        from modules.prompt_parser import parse_prompt_attention

        pieces = []
        for piece, weight in parse_prompt_attention(text):
            if piece == "BREAK" and weight == -1:
                pieces.append(([], -1.0))
            else:
                pieces.append((self.tokenize(piece), weight))
        return chunk_tokens(pieces, self.comma_token)

    def count_tokens(self, text: str) -> tuple[int, int]:
        """(tokens used, current limit) as A1111's `N/75` counter shows them."""
        chunks = self.chunks_for(text)
        used = sum(len([t for t in c.tokens if t != EOS]) for c in chunks)
        return used, CHUNK_LENGTH * max(1, len(chunks))

    @torch.no_grad()
    def encode(self, text: str, clip_skip: int = 1) -> Conditioning:
        chunks = self.chunks_for(text)
        contexts, pooled = [], None
        for i, chunk in enumerate(chunks):
            context, chunk_pooled = self._encode_chunk(chunk, clip_skip)
            contexts.append(context)
            if i == 0:
                pooled = chunk_pooled  # SDXL takes the pooled output of the first chunk
        return Conditioning(torch.cat(contexts, dim=1), pooled)

    def _ids(self, chunk: TokenChunk, pad: int) -> torch.Tensor:
        ids = [BOS] + chunk.tokens + [EOS]
        if pad != EOS:  # OpenCLIP pads with 0 after the first end token
            first_end = ids.index(EOS)
            ids = ids[: first_end + 1] + [pad] * (len(ids) - first_end - 1)
        return torch.tensor([ids], device=self.model.policy.device)

    def _encode_chunk(self, chunk: TokenChunk, clip_skip: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        family = self.model.family
        encoders = self.model.text_encoders
        weights = torch.tensor([1.0] + chunk.weights + [1.0], device=self.model.policy.device)
        pooled = None
        if family.is_sdxl:
            out_l = encoders[0](self._ids(chunk, EOS), output_hidden_states=True)
            out_g = encoders[1](self._ids(chunk, OPENCLIP_PAD), output_hidden_states=True)
            hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
            pooled = out_g.text_embeds
        elif family.name in ("sd2", "sd2-v"):
            hidden = encoders[0](self._ids(chunk, OPENCLIP_PAD)).last_hidden_state
        else:
            out = encoders[0](self._ids(chunk, EOS), output_hidden_states=clip_skip > 1)
            if clip_skip > 1:
                encoder = encoders[0]
                final_norm = (encoder.text_model if hasattr(encoder, "text_model") else encoder).final_layer_norm
                hidden = final_norm(out.hidden_states[-clip_skip])
            else:
                hidden = out.last_hidden_state
        return apply_emphasis(hidden, weights), pooled


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis: scale each token's vector, then restore the chunk's mean."""
    if bool((weights == 1.0).all()):
        return hidden
    original_mean = hidden.float().mean()
    scaled = hidden.float() * weights.reshape(1, -1, 1)
    scaled = scaled * (original_mean / scaled.mean())
    return scaled.to(hidden.dtype)
