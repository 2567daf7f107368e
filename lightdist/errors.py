"""User-facing errors: one clear line with the fix, printed by lightdist.main without a traceback."""


def one_line(text: object) -> str:
    """`text` with its line breaks (and the blank lines between them) folded into single spaces."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def error_line(message: str) -> str:
    """How every user-facing error is printed: one line, whatever line breaks the message has."""
    return "lightdist: error: " + one_line(message)


class LightdistError(Exception):
    """An error the user can fix. `hint` says how."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(LightdistError):
    """A bad override: unknown key, wrong type, impossible value."""


class DataError(LightdistError):
    """A dataset that is missing, corrupt or unusable."""


class CheckpointError(LightdistError):
    """A checkpoint that is missing or unreadable."""


class RankFailed(LightdistError):
    """Another process of a distributed job died: not the user's typo, but one line naming it."""

    exit_code = 1


class JobFailed(BaseException):
    """Carries a job's exception out of a Hydra app to main(), past Hydra's own error report (which
    catches Exception only); main() reports `error` as if nothing had been in between."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error
