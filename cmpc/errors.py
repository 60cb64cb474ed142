"""Errors meant for people: one line that says what is wrong and what to do.

Scripts catch :class:`CmpcError` and print its message instead of a traceback.
"""


class CmpcError(Exception):
    """Base class of every error cmpc raises on purpose."""


class ConfigError(CmpcError):
    """A configuration value is missing, unknown or inconsistent."""


def check_choice(key: str, value, choices) -> None:
    """Raise :class:`ConfigError` naming ``key`` and its allowed values unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is unknown: use one of {', '.join(map(str, choices))}")


class DatasetError(CmpcError):
    """A dataset file is missing, corrupt or malformed, or an input (image, sentence) is unusable."""


class TrainingDiverged(CmpcError):
    """The training loss became NaN or infinite."""
