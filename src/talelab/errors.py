"""The small family of errors a user can act on. The CLI prints them as one line and exits non-zero."""


class TalelabError(Exception):
    """Base class: the message must name the file, line or field at fault and say what to do."""

    exit_code = 1


class InputError(TalelabError):
    """A user-supplied file is missing, unreadable, empty or malformed."""

    exit_code = 2


class ConfigError(TalelabError):
    """An unknown preset, unknown config key or a value out of range."""

    exit_code = 2


class MismatchError(TalelabError):
    """Two artefacts do not fit together: tokenizer vs model, checkpoint vs shape, text vs context."""

    exit_code = 3


class TrainingDiverged(TalelabError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = 4
