"""Credentials out of messages and logs: the one place that knows what a secret in a URL looks like.

Every URL or error text that may reach a log, an exception message, a report or a KFP parameter goes
through here, so a new kind of secret (a query key, a URL form) is added once for all of them.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["MASK", "SECRET_QUERY_KEYS", "has_credentials", "redact_url", "scrub", "url_secrets"]

MASK = "***"
# Query keys whose values are credentials: libpq's password options, and pre-signed S3/GCS/Azure URLs.
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "sslpassword",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "sig",
        "signature",
        "token",
        "access_token",
    }
)
# Schemes whose user name alone may be a credential (https://<token>@host); a database user name is not.
_TOKEN_USER_SCHEMES = ("http", "https", "s3")


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    return parts if parts.scheme and parts.netloc else None


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries user info or a query value that is a credential.

    A malformed port does not hide user info: ``s3://key:secret@bucket:x/d.npz`` has credentials.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced [ in the host
        return "@" in url
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    return "@" in parts.netloc or any(key.lower() in SECRET_QUERY_KEYS for key, _ in query)


def url_secrets(url: str) -> tuple[str, ...]:
    """The credential values inside ``url`` (password, token user name, secret query values)."""
    parts = _split(url)
    if parts is None:
        return ()
    found = [parts.password or ""]
    if parts.username and parts.scheme.split("+")[0] in _TOKEN_USER_SCHEMES:
        found.append(parts.username)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    found += [value for key, value in query if key.lower() in SECRET_QUERY_KEYS]
    secrets = {urllib.parse.unquote(value) for value in found if value} | {value for value in found if value}
    return tuple(sorted(secrets, key=len, reverse=True))


def redact_url(url: str) -> str:
    """``url`` with its password, token user name and secret query values replaced by ``***``.

    Anything that does not parse as a URL with a host is returned as ``<unparseable URL>`` when it
    contains an ``@`` (it might hold a password) and unchanged otherwise (a file path, a SQLite URL).
    """
    parts = _split(url)
    if parts is None:
        return "<unparseable URL>" if "@" in url else url
    userinfo, _, host = parts.netloc.rpartition("@")
    if userinfo:
        user, has_password, _ = userinfo.partition(":")
        if parts.scheme.split("+")[0] in _TOKEN_USER_SCHEMES:
            userinfo = MASK
        else:
            userinfo = f"{user}:{MASK}" if has_password else user
    query = "&".join(
        f"{key}={MASK}" if key.lower() in SECRET_QUERY_KEYS else f"{key}={urllib.parse.quote(value, safe='/:,')}"
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every non-empty secret (longest first), as given or percent-encoded as a URL would
    carry it, replaced by ``***``."""
    forms = {form for s in secrets if s for form in (s, urllib.parse.quote(s, safe=""))}
    for secret in sorted(forms, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
