"""Redis URLs as they may be shown: the one helper that hides passwords.

A URL such as ``redis://user:secret@host:6379/0`` carries a password (or an ACL user's
password); ``redis://:secret@host`` and ``unix://:secret@/run/redis.sock`` too, and so may the
query string (``?password=secret``). Every message, log line and repr of scanstream that names
a server goes through :func:`mask_url`, so that a password never reaches a terminal, a log
file or a bug report.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "mask_url"]

#: What replaces a password.
MASK = "***"

# Query options that redis-py reads as secrets (``?password=...``).
_SECRET_OPTIONS = frozenset({"password", "ssl_password"})
# Fallback for a URL urlsplit cannot take apart: hide everything between "://" and the last "@".
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*@|.*@)")


def mask_url(url: object) -> str:
    """Return ``url`` with every password replaced by ``***``; the rest is kept as given.

    ``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``;
    ``redis://:secret@host`` -> ``redis://:***@host``; a ``password=`` query option is
    masked too. A URL without a password is returned unchanged, and a value that is not a
    parsable URL is returned with anything that looks like user info masked (never raises).

    Parameters
    ----------
    url : str
        A ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` URL (several
        ``host:port`` seeds share the one user info); anything else is shown as text.

    Returns
    -------
    str
        The URL, safe to print or log.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            # "redis://name@host": a user name for redis-py, a password for other clients.
            netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() in _SECRET_OPTIONS for key, _ in pairs):
                query = urlencode(
                    [(k, MASK if k.lower() in _SECRET_OPTIONS else v) for k, v in pairs],
                    safe="*",
                )
        if netloc == parts.netloc and query == parts.query:
            return text
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # an unparsable netloc (a bad port, brackets...)
        return _USERINFO_RE.sub(lambda m: f"{m.group(1)}{MASK}@", text)
