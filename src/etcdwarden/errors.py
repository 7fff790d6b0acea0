"""The error hierarchy of etcdwarden.

Every failure the library can report is an :class:`EtcdwardenError` whose message says what failed,
why, and what to do. The CLI maps the class to a documented exit code:

* 1 (``EXIT_FAILED``): the operation failed;
* 2 (``EXIT_USAGE``): usage or bad input (malformed endpoint, missing file, bad config);
* 3 (``EXIT_REFUSED``): a safety check refused; the message names the ``--force`` that overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


# -- settings named in messages ------------------------------------------------------------------
# The same library call is made by the CLI (flags) and by the daemon (configuration keys), so a library
# message names a setting by a neutral token, ``setting("lock_wait")``; ``str(error)`` says it in words
# (NEUTRAL_SETTINGS) and the caller's renderer names its own flag or key (``error.render(names)``).
_SETTING_RE = re.compile(r"\{setting:([a-z_]+)\}")
NEUTRAL_SETTINGS: dict[str, str] = {
    "lock_wait": "wait longer for the lock",
    "continue_on_error": "continue-on-error",
    "force": "force",
    "defrag_timeout": "a longer defragmentation timeout",
    "rule": "rule",
    "incomplete_grace": "the grace period of incomplete backups",
    "credentials": "the credentials (user and password)",
    "resources": "the resource paths",
    "encrypt_to": "age recipient",
}


def setting(name: str) -> str:
    """The token for setting ``name`` (a key of :data:`NEUTRAL_SETTINGS`) in a library message."""
    if name not in NEUTRAL_SETTINGS:
        raise KeyError(name)
    return "{setting:" + name + "}"


def name_settings(text: str, names: Mapping[str, str] | None = None) -> str:
    """``text`` with each setting token replaced by ``names[setting]``, else by its neutral words."""
    names = names or {}
    return _SETTING_RE.sub(lambda m: names.get(m[1]) or NEUTRAL_SETTINGS.get(m[1], m[1].replace("_", " ")), text)


class EtcdwardenError(Exception):
    """Root of every error etcdwarden raises on purpose.

    ``str(e)`` names settings neutrally; :meth:`render` names them as the caller's user knows them."""

    exit_code = EXIT_FAILED

    def __str__(self) -> str:
        return name_settings(super().__str__())

    def render(self, names: Mapping[str, str]) -> str:
        return name_settings(super().__str__(), names)


class UsageError(EtcdwardenError):
    """The user asked for something malformed or impossible (exit 2)."""

    exit_code = EXIT_USAGE


class SafetyRefusal(EtcdwardenError):
    """A safety check refused to go on (exit 3). ``force_flag`` names the override, if any."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, force_flag: str | None = "--force") -> None:
        if force_flag:
            message = f"{message} (override with {force_flag} if you are sure)"
        super().__init__(message)
        self.force_flag = force_flag


class BinaryNotFound(EtcdwardenError):
    """An etcd binary (etcd, etcdctl, etcdutl) is needed and was not found."""


# --- talking to etcd -------------------------------------------------------------------------


class EtcdError(EtcdwardenError):
    """Base of the errors that come back from (or on the way to) an etcd server."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(f"{endpoint}: {message}" if endpoint else message)
        self.endpoint = endpoint
        self.detail = message


class Unreachable(EtcdError):
    """The endpoint could not be reached (connection refused, DNS, TLS handshake...)."""


class TLSError(Unreachable):
    """The TLS handshake failed (wrong CA, missing or rejected client certificate)."""


class Timeout(EtcdError):
    """A dial or command timeout expired."""


class PermissionDenied(EtcdError):
    """The server refused the call for lack of permission (etcd: ``auth: permission denied``)."""


class AuthenticationFailed(EtcdError):
    """User name or password rejected, or the token could not be renewed."""


class NoLeader(EtcdError):
    """The member has no leader (the cluster may have lost quorum)."""


class NoSpace(EtcdError):
    """The NOSPACE alarm is active: the database exceeded its quota."""


class Compacted(EtcdError):
    """The requested revision has been compacted."""


class NotFound(EtcdError):
    """The member, key or lease asked for does not exist."""


class Corrupt(EtcdError):
    """The cluster reports CORRUPT."""


class Unsupported(EtcdError):
    """The member cannot serve this call (e.g. a learner)."""
