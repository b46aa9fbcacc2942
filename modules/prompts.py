"""From the request's prompt to each image's prompt: styles, then comments, then wildcards.

`PromptEnvironment` is what a job needs besides the request and the model: the prompt settings, the
styles database, the wildcards folder, the extra-network registry and optionally a fixed embedding lookup
(without one, processing asks the providers extensions register for the loaded model: embedding_hooks.py). The engine builds one per job with `PromptEnvironment.from_settings`;
without one, generation uses the defaults, no styles and no wildcard files.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from modules.errors import ValidationError
from modules.extra_networks import ExtraNetworkRegistry, default_registry
from modules.prompt_parser import strip_comments
from modules.styles import StyleDatabase
from modules.text_encoding import EMPHASIS_MODES, EmbeddingLookup, EncodeSettings
from modules.wildcards import Wildcards

if TYPE_CHECKING:
    from modules.paths import Paths


@dataclass(frozen=True)
class PromptOptions:
    """The prompt settings, by A1111 option name."""

    emphasis: str = "Original"
    enable_prompt_comments: bool = True
    comma_padding_backtrack: int = 20

    @classmethod
    def from_settings(cls, get: Callable[[str], Any]) -> "PromptOptions":
        """Read from a settings getter (`Settings.get`); a missing value keeps the default."""
        values = {f.name: get(f.name) for f in fields(cls)}
        return cls().with_overrides({k: v for k, v in values.items() if v is not None})

    def with_overrides(self, overrides: Mapping[str, Any]) -> "PromptOptions":
        """These options with a request's override_settings on top; bad values raise ValidationError."""
        changes = {f.name: overrides[f.name] for f in fields(self) if f.name in overrides}
        result = replace(self, **changes)
        name = "override_settings.{}"
        if result.emphasis not in EMPHASIS_MODES:
            raise ValidationError(name.format("emphasis"),
                                  f"must be one of {', '.join(EMPHASIS_MODES)}, got {result.emphasis!r}")
        if not isinstance(result.enable_prompt_comments, bool):
            raise ValidationError(name.format("enable_prompt_comments"), "must be true or false")
        backtrack = result.comma_padding_backtrack
        if isinstance(backtrack, bool) or not isinstance(backtrack, int) or not 0 <= backtrack <= 74:
            raise ValidationError(name.format("comma_padding_backtrack"), f"must be 0..74, got {backtrack!r}")
        return result

    def encode_settings(self, clip_skip: int) -> EncodeSettings:
        return EncodeSettings(self.emphasis, clip_skip, self.comma_padding_backtrack)


@dataclass
class PromptEnvironment:
    options: PromptOptions = field(default_factory=PromptOptions)
    styles: Optional[StyleDatabase] = None
    wildcards: Wildcards = field(default_factory=Wildcards)
    extra_networks: ExtraNetworkRegistry = field(default_factory=lambda: default_registry)
    embeddings: Optional[EmbeddingLookup] = None

    @classmethod
    def from_settings(cls, get: Callable[[str], Any], paths: "Paths", styles: Optional[StyleDatabase] = None,
                      **kwargs: Any) -> "PromptEnvironment":
        """The engine's environment: settings, `styles` (or a fresh read of styles.csv), `<data dir>/wildcards`."""
        return cls(options=PromptOptions.from_settings(get),
                   styles=styles if styles is not None else StyleDatabase(paths.styles_file),
                   wildcards=Wildcards(paths.data_dir / "wildcards"), **kwargs)


def prepare_prompts(prompt: str, negative_prompt: str, styles: Sequence[str], seeds: Sequence[int],
                    env: PromptEnvironment, options: PromptOptions,
                    notes: Optional[list[str]] = None) -> tuple[list[str], list[str]]:
    """Each image's (prompt, negative prompt), as A1111 writes them into the infotext: styles applied,
    comments removed, wildcards chosen with that image's seed. Extra-network tags stay in."""
    if styles:
        if env.styles is None:
            _note(notes, "styles were asked for but no styles database is loaded; they were not applied")
        else:
            for name in env.styles.unknown(styles):
                _note(notes, f"style '{name}' not found")
            prompt = env.styles.apply_styles_to_prompt(prompt, styles)
            negative_prompt = env.styles.apply_negative_styles_to_prompt(negative_prompt, styles)
    if options.enable_prompt_comments:
        prompt, negative_prompt = strip_comments(prompt), strip_comments(negative_prompt)
    prompts = [env.wildcards.expand(prompt, seed, notes) for seed in seeds]
    negatives = [env.wildcards.expand(negative_prompt, seed, notes) for seed in seeds]
    return prompts, negatives


def _note(notes: Optional[list[str]], message: str) -> None:
    if notes is not None and message not in notes:
        notes.append(message)
