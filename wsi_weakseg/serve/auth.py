"""The server's bearer token: from ``--token-file``, ``WSI_WEAKSEG_TOKEN``, or generated at start."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from ..errors import ConfigError

TOKEN_ENV = "WSI_WEAKSEG_TOKEN"
MIN_TOKEN = 16  # characters


def load_token(token_file: str | os.PathLike | None) -> tuple[str, bool]:
    """``(token, generated)``: the token file's first line, else ``$WSI_WEAKSEG_TOKEN``, else a new random one.

    Raises
    ------
    ConfigError
        The file cannot be read, or the token is shorter than 16 characters.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"cannot read a token from --token-file {token_file} ({exc}); write one line of at "
                              f"least {MIN_TOKEN} characters into it") from None
        source = f"--token-file {token_file}"
    elif os.environ.get(TOKEN_ENV, "").strip():
        token, source = os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    else:
        return secrets.token_urlsafe(24), True
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"the token from {source} has {len(token)} characters; use at least {MIN_TOKEN} "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    return token, False


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token_file: str | os.PathLike | None) -> None:
    """Refuse to listen beyond loopback without a token file (a printed token would be the only secret)."""
    if not is_loopback(host) and token_file is None:
        raise ConfigError(f"--host {host} is reachable from other machines; give --token-file with a secret token "
                          "(or listen on 127.0.0.1)")


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
