"""Passwords out of every line the toolkit shows or writes: URLs masked where the driver parses them.

A database URL (``postgresql://user:password@host:5432/db``) may reach an error line, a log, the
run history or a report in any form: well formed, with a malformed port (``:5543x``), with a typo
in its scheme (``postgersql://``, then taken for a file path whose ``//`` collapses to ``/``), or
inside a list that training.yaml holds instead of a text. ``mask_url`` masks each of them; the
toolkit's error lines (``toolkit.core.cli.one_line``), its log handlers (``MaskingFormatter``),
the config's quotes of a value and the history lines all pass through it.

Usage:
    mask_url("cannot reach postgresql://u:pw@h/db")   # 'cannot reach postgresql://u:***@h/db'
"""
from __future__ import annotations

import logging
import re
from typing import Any

# scheme:// (a URL) or scheme:/ (the same after a path collapsed its //); two letters at least, so a
# Windows drive (C:/) is never taken for one
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_LOOSE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:/+")
# what may follow the user information: a host name, an IPv4/IPv6 address or nothing (a socket), a port
# (a malformed one too, ``:5543x``: the driver refuses it, the password before it is still masked)
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.%]*\]|[A-Za-z0-9._%~\-]*)(:[^/?#@\s]*)?$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:/+\S+")


def _host_end(rest: str, start: int) -> int:
    end = len(rest)
    for sep in "/?#":
        found = rest.find(sep, start)
        if found >= 0:
            end = min(end, found)
    return end


def split_url(text: str) -> tuple[str, str | None, str, str] | None:
    """``scheme://``, user information (None: none), ``host[:port]``, the rest (``/db?query``).

    Split as the driver reads it: the user information ends at the LAST ``@`` that is followed by
    a host (a name or address, an optional port, then ``/``, ``?``, ``#`` or the end), so a raw
    ``@``, ``/`` or ``:`` inside a password stays inside it. When no ``@`` is followed by a valid
    host (a malformed port, ``:5543x``), the last ``@`` ends it all the same: what stands before it
    is never shown. None: not ``scheme://...``.
    """
    match = _SCHEME.match(text)
    if not match:
        return None
    scheme, rest = match.group(0), text[match.end():]
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        host_end = _host_end(rest, at + 1)
        if _HOSTPORT.match(rest[at + 1:host_end]):
            return scheme, rest[:at], rest[at + 1:host_end], rest[host_end:]
    at = rest.rfind("@")
    if at >= 0:  # no valid host after any '@': the user information still ends at the last one
        host_end = _host_end(rest, at + 1)
        return scheme, rest[:at], rest[at + 1:host_end], rest[host_end:]
    host_end = _host_end(rest, 0)
    return scheme, None, rest[:host_end], rest[host_end:]


def _mask_one(url: str) -> str:
    loose = _LOOSE_SCHEME.match(url)
    if loose and not _SCHEME.match(url):   # scheme:/user:pw@host (a collapsed path): read as scheme://
        slashes = loose.group(0)[loose.group(0).index(":") + 1:]
        masked = _mask_one(url[:loose.end() - len(slashes) - 1] + "://" + url[loose.end():])
        return masked.replace("://", ":" + slashes, 1)
    parts = split_url(url)
    if parts is None:
        return url
    scheme, userinfo, hostport, tail = parts
    if userinfo is not None and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}{userinfo + '@' if userinfo is not None else ''}{hostport}{tail}"


def mask_url(text: Any) -> str:
    """Text with the password of each URL in it replaced by ``***`` (``?password=`` too).

    The password is found where the driver finds it (``split_url``), never by searching for its
    text: a password that also occurs in the host, the database or the table masks nothing else.
    """
    text = str(text)
    if "/" not in text:   # no URL in it: the common case, at no cost
        return text
    if _SCHEME.match(text.strip()):  # one URL (a password may even hold a space)
        return _mask_one(text.strip())
    return _URL_IN_TEXT.sub(lambda m: _mask_one(m.group(0)), text)


def mask_values(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string masked (a history line)."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_values(v) for v in value]
    return value


class MaskingFormatter(logging.Formatter):
    """A log formatter whose every line (message, arguments, traceback) has its URLs' passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_url(super().format(record))
