"""The configuration error and its check, shared by every config dataclass."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the source and the fix."""


def require(ok: bool, key: str, problem: str, fix: str) -> None:
    """Raise ConfigError('key: problem; fix: fix') unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {problem}" + (f"; fix: {fix}" if fix else ""))
