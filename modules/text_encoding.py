"""Prompt text → conditioning tensors, as A1111's sd_hijack_clip does it, with no length limit.

Tokens go in chunks of 75; each chunk is encoded as [start] + 75 + [end] = 77 ids and the chunks are
concatenated along the token axis. BREAK pads the current chunk and starts a new one. When a chunk fills
up, the words after its last comma (if that comma is at most `comma_padding_backtrack` tokens back) move to
the next chunk. A textual-inversion embedding is never split across chunks.

Emphasis (modes as A1111's `emphasis` setting names them):
  Original  multiply each token's vector by its weight, then restore the chunk's mean
  No norm   multiply, don't restore the mean
  Ignore    read the brackets but use no weights
  None      no emphasis syntax at all: brackets are text and BREAK is a word

Texts encoded together (the steps of one edited prompt) share the mean that "Original" restores, and the
shorter ones are padded with empty chunks: exactly A1111's batch behaviour. SDXL runs both text encoders,
applies emphasis to each output, concatenates them, and takes the pooled vector from the first chunk; an
empty SDXL negative prompt is all zeros (A1111's force_zero_embeddings).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Protocol, Sequence

import torch

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # A1111's default comma_padding_backtrack
BOS, EOS = 49406, 49407
OPENCLIP_PAD = 0
EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")


# ---------------------------------------------------------------------------------------------- types

@dataclass
class Conditioning:
    """Cross-attention context for a batch, plus how the rows map onto images.

    `parts` is None when row i belongs to image i with weight 1. Composable prompts ("a AND b") give an
    image several rows: parts[i] lists (row, weight) for image i, and guidance sums their deltas.
    """

    context: torch.Tensor  # [rows, 77 * chunks, dim]
    pooled: Optional[torch.Tensor] = None  # [rows, dim] (SDXL only)
    parts: Optional[list[list[tuple[int, float]]]] = None

    def repeat_to(self, length: int) -> "Conditioning":
        """Pad the token axis by repeating the last vector (how A1111 stacks prompts of unequal length)."""
        missing = length - self.context.shape[1]
        if missing <= 0:
            return self
        pad = self.context[:, -1:].expand(-1, missing, -1)
        return Conditioning(torch.cat([self.context, pad], dim=1), self.pooled, self.parts)


def stack(conds: Sequence[Conditioning], parts: Optional[list[list[tuple[int, float]]]] = None) -> Conditioning:
    length = max(c.context.shape[1] for c in conds)
    padded = [c.repeat_to(length) for c in conds]
    pooled = None if padded[0].pooled is None else torch.cat([c.pooled for c in padded])
    return Conditioning(torch.cat([c.context for c in padded]), pooled, parts)


@dataclass(frozen=True)
class EncodeSettings:
    """Everything besides the text and the model that changes the tensors (so: part of the cache key)."""

    emphasis: str = "Original"
    clip_skip: int = 1
    comma_padding_backtrack: int = COMMA_BACKTRACK


@dataclass
class Embedding:
    """A textual-inversion embedding: one [vectors, dim] tensor per text encoder (SDXL: CLIP-L, then CLIP-G)."""

    name: str
    vectors: list[torch.Tensor]
    hash: Optional[str] = None  # short file hash for the infotext's `TI hashes` (None: not written)

    @property
    def vector_count(self) -> int:
        return int(self.vectors[0].shape[0])


class EmbeddingLookup(Protocol):
    """Finds an embedding whose name's tokens start at `position`: (embedding, prompt tokens it replaces).

    `version` must change whenever the embeddings do: encoded prompts are cached under it."""

    version: Hashable

    def find(self, tokens: Sequence[int], position: int) -> Optional[tuple[Embedding, int]]: ...


_versions = itertools.count(1)


class EmbeddingTable:
    """The plain lookup: each embedding is found by the token ids of its name (as A1111 finds them)."""

    def __init__(self, tokenize: Callable[[str], list[int]], embeddings: Sequence[Embedding] = ()):
        self._tokenize = tokenize
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        self.version = next(_versions)
        for embedding in embeddings:
            self.add(embedding)

    def add(self, embedding: Embedding) -> None:
        ids = self._tokenize(embedding.name)
        if not ids:
            return
        entries = [e for e in self._by_first.get(ids[0], []) if e[1].name != embedding.name]
        entries.append((ids, embedding))
        self._by_first[ids[0]] = sorted(entries, key=lambda e: len(e[0]), reverse=True)  # longest name first
        self.version = next(_versions)

    def find(self, tokens: Sequence[int], position: int) -> Optional[tuple[Embedding, int]]:
        for ids, embedding in self._by_first.get(tokens[position], ()):
            if list(tokens[position:position + len(ids)]) == ids:
                return embedding, len(ids)
        return None


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)  # without start/end; CHUNK_LENGTH once finished
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)  # (offset in tokens, embedding)


def empty_chunk() -> PromptChunk:
    return PromptChunk([EOS] * CHUNK_LENGTH, [1.0] * CHUNK_LENGTH)


# ---------------------------------------------------------------------------------------------- chunks

def tokenize_prompt(text: str, tokenize: Callable[[list[str]], list[list[int]]], comma_token: int,
                    settings: EncodeSettings = EncodeSettings(),
                    embeddings: Optional[EmbeddingLookup] = None) -> tuple[list[PromptChunk], int]:
    """A1111's tokenize_line: (chunks, token count). Full chunks count 75 each; the last counts what it holds."""
    from modules.prompt_parser import parse_prompt_attention

    pieces = parse_prompt_attention(text) if settings.emphasis != "None" else [(text, 1.0)]
    token_lists = tokenize([piece for piece, _ in pieces])
    backtrack = settings.comma_padding_backtrack
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        pad = CHUNK_LENGTH - len(chunk.tokens)
        if pad > 0:
            chunk.tokens += [EOS] * pad
            chunk.weights += [1.0] * pad
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for tokens, (piece, weight) in zip(token_lists, pieces):
        if piece == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (backtrack != 0 and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= backtrack):
                # Keep the words after the last comma together: move them to the next chunk.
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                next_chunk()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            found = embeddings.find(tokens, position) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            embedding, used = found
            if len(chunk.tokens) + embedding.vector_count > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), embedding))
            chunk.tokens += [0] * embedding.vector_count
            chunk.weights += [weight] * embedding.vector_count
            position += used
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, count


def token_limit(count: int) -> int:
    """The N in the UI's `count/N`: the next multiple of 75."""
    return -(-max(count, 1) // CHUNK_LENGTH) * CHUNK_LENGTH


# ---------------------------------------------------------------------------------------------- emphasis

def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor, mode: str = "Original",
                   counts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weights [rows, tokens] applied to hidden [rows, tokens, dim] in the given mode.

    "Original" restores the mean over the whole batch, as A1111 does for texts it encodes together;
    `counts` says how many times each row stands in that batch (repeated texts are encoded once here).
    """
    if mode in ("None", "Ignore") or bool((weights == 1.0).all()):
        return hidden
    scaled = hidden.float() * weights.reshape(weights.shape + (1,))
    if mode == "Original":
        counts = torch.ones(hidden.shape[0], device=hidden.device) if counts is None else counts.to(hidden.device)

        def batch_mean(z: torch.Tensor) -> torch.Tensor:
            return (z.mean(dim=(1, 2)) * counts).sum() / counts.sum()

        scaled = scaled * (batch_mean(hidden.float()) / batch_mean(scaled))
    return scaled.to(hidden.dtype)


# ---------------------------------------------------------------------------------------------- encoder

class PromptEncoder:
    """Encodes text for one loaded model (SD1, SD2 or SDXL) with its text encoder(s).

    Only the tokenizer is needed to count tokens, so `model` may be anything with a `tokenizer`.
    """

    def __init__(self, model, embeddings: Optional[EmbeddingLookup] = None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.comma_token = self.tokenizer.convert_tokens_to_ids(",</w>")
        self.embeddings = embeddings

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, truncation=False).input_ids if texts else []

    def chunks_for(self, text: str, settings: EncodeSettings = EncodeSettings()) -> list[PromptChunk]:
        return tokenize_prompt(text, self.tokenize, self.comma_token, settings, self.embeddings)[0]

    def count_tokens(self, text: str, steps: int = 20, settings: EncodeSettings = EncodeSettings(),
                     negative: bool = False, comments: bool = True) -> tuple[int, int]:
        """(tokens, limit) as A1111's `N/75` counter shows them: comments and extra-network tags left out,
        AND parts and every step of prompt editing counted separately, the largest shown."""
        from modules.extra_networks import parse_extra_networks
        from modules.prompt_parser import prompt_schedules, split_and, strip_comments

        if comments:
            text = strip_comments(text)
        text = parse_extra_networks(text)[0]
        parts = [text] if negative else [part for part, _ in split_and(text)]
        texts = [t for schedule in prompt_schedules(parts, steps) for _, t in schedule]
        count = max(tokenize_prompt(t, self.tokenize, self.comma_token, settings, self.embeddings)[1] for t in texts)
        return count, token_limit(count)

    @torch.no_grad()
    def encode(self, text: str, clip_skip: int = 1, settings: Optional[EncodeSettings] = None) -> Conditioning:
        settings = settings or EncodeSettings(clip_skip=clip_skip)
        return self.encode_batch([text], settings)[0]

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str], settings: EncodeSettings = EncodeSettings(),
                     negative: bool = False) -> list[Conditioning]:
        """Encode texts together, as A1111's text encoder forward does: equal chunk counts, a shared mean."""
        unique = list(dict.fromkeys(texts))
        if negative and self.model.family.is_sdxl and all(t == "" for t in unique):
            return [self._zero_conditioning() for _ in texts]
        counts = torch.tensor([float(list(texts).count(t)) for t in unique])
        chunked = [self.chunks_for(t, settings) for t in unique]
        contexts: list[list[torch.Tensor]] = [[] for _ in unique]
        pooled = None
        for i in range(max(len(c) for c in chunked)):
            batch = [c[i] if i < len(c) else empty_chunk() for c in chunked]
            hidden, chunk_pooled = self._encode_chunks(batch, settings, counts)
            for row, context in enumerate(hidden.split(1)):
                contexts[row].append(context)
            if i == 0:
                pooled = chunk_pooled  # SDXL takes the pooled output of the first chunk
        found = {t: Conditioning(torch.cat(contexts[row], dim=1), None if pooled is None else pooled[row:row + 1])
                 for row, t in enumerate(unique)}
        return [found[t] for t in texts]

    def _zero_conditioning(self) -> Conditioning:
        dims = [e.config.hidden_size for e in self.model.text_encoders]
        device, dtype = self.model.policy.device, self.model.policy.dtype
        pooled_dim = self.model.text_encoders[-1].config.projection_dim
        return Conditioning(torch.zeros(1, CHUNK_LENGTH + 2, sum(dims), device=device, dtype=dtype),
                            torch.zeros(1, pooled_dim, device=device, dtype=dtype))

    def _ids(self, chunks: Sequence[PromptChunk], pad: int) -> torch.Tensor:
        rows = []
        for chunk in chunks:
            ids = [BOS] + chunk.tokens + [EOS]
            if pad != EOS:  # OpenCLIP pads with 0 after the first end token
                first_end = ids.index(EOS)
                ids = ids[: first_end + 1] + [pad] * (len(ids) - first_end - 1)
            rows.append(ids)
        return torch.tensor(rows, device=self.model.policy.device)

    def _encode_chunks(self, chunks: Sequence[PromptChunk], settings: EncodeSettings,
                       counts: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        family = self.model.family
        encoders = self.model.text_encoders
        device = self.model.policy.device
        weights = torch.tensor([[1.0] + c.weights + [1.0] for c in chunks], device=device)
        fixes = [c.fixes for c in chunks]

        def emphasized(hidden: torch.Tensor) -> torch.Tensor:
            return apply_emphasis(hidden, weights, settings.emphasis, counts)

        if family.is_sdxl:
            out_l = _run(encoders[0], self._ids(chunks, EOS), fixes, 0, output_hidden_states=True)
            out_g = _run(encoders[1], self._ids(chunks, OPENCLIP_PAD), fixes, 1, output_hidden_states=True)
            hidden = torch.cat([emphasized(out_l.hidden_states[-2]), emphasized(out_g.hidden_states[-2])], dim=-1)
            return hidden, out_g.text_embeds
        if family.name in ("sd2", "sd2-v"):
            return emphasized(_run(encoders[0], self._ids(chunks, OPENCLIP_PAD), fixes, 0).last_hidden_state), None
        clip_skip = settings.clip_skip
        out = _run(encoders[0], self._ids(chunks, EOS), fixes, 0, output_hidden_states=clip_skip > 1)
        if clip_skip > 1:
            hidden = _core(encoders[0]).final_layer_norm(out.hidden_states[-clip_skip])
        else:
            hidden = out.last_hidden_state
        return emphasized(hidden), None


def _core(encoder: torch.nn.Module) -> torch.nn.Module:
    return encoder.text_model if hasattr(encoder, "text_model") else encoder


def _run(encoder: torch.nn.Module, ids: torch.Tensor, fixes: list[list[tuple[int, Embedding]]], index: int,
         **kwargs):
    """Run a text encoder; embedding vectors replace the placeholder tokens' input embeddings."""
    if not any(fixes):
        return encoder(ids, **kwargs)

    def put_vectors(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, row_fixes in enumerate(fixes):
            for offset, embedding in row_fixes:
                vectors = embedding.vectors[index].to(output.device, output.dtype)
                output[row, offset + 1: offset + 1 + vectors.shape[0]] = vectors  # +1: the start token
        return output

    handle = _core(encoder).embeddings.token_embedding.register_forward_hook(put_vectors)
    try:
        return encoder(ids, **kwargs)
    finally:
        handle.remove()
