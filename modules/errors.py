"""Error types a user can act on. The API maps them to 4xx responses; the UI shows the message."""


class AtelierError(Exception):
    """Base for every error the user should see as a message rather than a traceback."""


class ValidationError(AtelierError, ValueError):
    """A request field is invalid. `field` names it, as the API names it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CheckpointError(AtelierError):
    """A model file can't be found, read, recognised or loaded."""


class UnsafeFileError(CheckpointError):
    """A pickle needs more than plain tensors to load, so it was refused."""


class GenerationError(AtelierError):
    """Generation failed for a reason other than bad input (NaNs that a retry couldn't fix, for example)."""


class PromptSyntaxError(AtelierError, ValueError):
    """A prompt's editing or alternation syntax can't be read. Generation then reads the prompt literally
    and warns, as A1111 does; only the parser's strict entry points raise it."""
