"""What a script may touch: the exact paths and hosts a run grants Deno (nothing by default)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from .._errors import InvalidTypeError, ValidationError

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")

def _split_host(entry: str) -> tuple[str, int | None]:
    """``host`` / ``host:port`` / ``[v6]:port`` → (host, port), validated."""
    if not isinstance(entry, str):
        raise InvalidTypeError(f"a net target must be a str, got {type(entry).__name__}")
    text = entry.strip()
    port: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValidationError(f"net target {entry!r}: unclosed '[' in an IPv6 address")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValidationError(f"net target {entry!r}: expected ':port' after ']'")
            port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValidationError(f"net target {entry!r}: {host!r} is not an IPv6 address") from None
        host = f"[{host}]"
    else:
        if text.count(":") > 1:
            raise ValidationError(f"net target {entry!r}: write an IPv6 address as [addr] or [addr]:port")
        host, _, port_text = text.partition(":")
        port = port_text if ":" in text else None
        if not _HOST.match(host):
            raise ValidationError(f"net target {entry!r}: {host!r} is not a host name or address")
        host = host.lower()
    if port is None:
        return host, None
    # ASCII digits only (str.isdigit also takes '²' and other scripts' digits), at most five:
    # int() is never handed a text it refuses or thousands of digits
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535:
        raise ValidationError(f"net target {entry!r}: port {port!r} is not a number in 1…65535")
    return host, int(port)

def _absolute(path: str | os.PathLike[str], what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a path, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ValidationError(f"{what} {text!r} is not a usable path")
    if "," in text:
        raise ValidationError(f"{what} {text!r} contains ',', which Deno's permission lists cannot hold")
    return os.path.abspath(os.path.expanduser(text))

@dataclass
class PermissionPolicy:
    """What a script may touch: the real Deno permissions of a run, and what
    ``op_check_permission(permission, target)`` answers — one and the same thing.

    ``read`` and ``write`` are path roots, ``net`` hosts (``host``, ``host:port``,
    ``[v6]:port``); all empty by default, which is Deno with no permission at all. Roots are
    resolved (``..``, symlinks; relative roots against the current directory) when first used,
    and that resolution is pinned: a root that later becomes a symlink elsewhere grants nothing
    rather than the new target, and a root that resolves to ``/`` is refused. Targets must be
    absolute; they are resolved before being compared, so ``/srv/data/../../etc`` and a
    symlink out of a root are not under it.

    Deno itself compares paths without following symlinks: grant only directories whose
    contents you control (see docs/execution-plane.md).
    """

    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    net: list[str] = field(default_factory=list)
    _pinned: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ("read", "write", "net"):
            value = getattr(self, kind)
            if isinstance(value, (str, bytes)) or not isinstance(value, list):
                raise InvalidTypeError(
                    f"PermissionPolicy({kind}=...) takes a list, got {type(value).__name__}")
        self.read = [self._root(root) for root in self.read]
        self.write = [self._root(root) for root in self.write]
        for host in self.net:
            _split_host(host)

    def allow_read(self, path: str | os.PathLike[str]) -> None:
        """Grant reading below ``path`` (resolved now; see the class docstring)."""
        self.read.append(self._root(path))

    def allow_write(self, path: str | os.PathLike[str]) -> None:
        """Grant writing below ``path`` (resolved now; see the class docstring)."""
        self.write.append(self._root(path))

    def allow_net(self, host: str) -> None:
        """Grant connections to ``host`` (any port) or ``host:port``."""
        _split_host(host)
        self.net.append(host)

    def _root(self, path: str | os.PathLike[str]) -> str:
        """Validate a root, pin its resolution, and return it (absolute)."""
        absolute = _absolute(path, "permission root")
        real = os.path.realpath(absolute)
        if real == os.sep:
            raise ValidationError(f"permission root {os.fspath(path)!r} resolves to '/', which would "
                                  "grant every path")
        pinned = self._pinned.setdefault(absolute, real)
        if pinned != real:
            raise ValidationError(f"permission root {absolute!r} now resolves to {real!r}, not "
                                  f"{pinned!r} as when it was granted")
        return absolute

    def roots(self, kind: str) -> list[str]:
        """The resolved ``read`` or ``write`` roots that still resolve as when they were granted:
        what Deno is granted, and what the run's Landlock confinement opens to it."""
        if kind not in ("read", "write"):
            raise ValidationError(f"unknown root kind {kind!r}; use 'read' or 'write'")
        return sorted(set(self._roots(kind)))

    def _roots(self, kind: str) -> list[str]:
        """The resolved roots of ``kind`` that still resolve as when they were granted."""
        out = []
        for root in self.read if kind == "read" else self.write:
            try:
                absolute = self._root(root)
            except (ValidationError, InvalidTypeError):
                continue
            out.append(self._pinned[absolute])
        return out

    def check(self, permission: str, target: str) -> bool:
        """Whether the policy grants ``permission`` (``read``, ``write``, ``net``) on ``target``.

        Raises ``ValidationError`` for an unknown permission, a relative path or a bad port.
        """
        if not isinstance(permission, str) or not isinstance(target, str):
            raise InvalidTypeError("op_check_permission(permission, target) takes two strings")
        if permission == "net":
            host, port = _split_host(target)
            for entry in self.net:
                granted_host, granted_port = _split_host(entry)
                if granted_host == host and (granted_port is None or granted_port == port):
                    return True
            return False
        if permission not in ("read", "write"):
            raise ValidationError(f"unknown permission {permission!r}; use 'read', 'write' or 'net'")
        if not target or "\x00" in target:
            return False
        if not os.path.isabs(target):
            raise ValidationError(f"path {target!r} is relative; op_check_permission takes an absolute path")
        resolved = os.path.realpath(target)
        for root in self._roots(permission):
            if resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep):
                return True
        return False

    def deno_flags(self) -> list[str]:
        """The ``--allow-*`` flags that grant Deno exactly this policy (resolved roots)."""
        flags = []
        for kind in ("read", "write"):
            roots = self.roots(kind)
            if roots:
                flags.append(f"--allow-{kind}={','.join(roots)}")
        hosts = []
        for entry in self.net:
            host, port = _split_host(entry)
            hosts.append(host if port is None else f"{host}:{port}")
        if hosts:
            flags.append(f"--allow-net={','.join(sorted(set(hosts)))}")
        return flags

    def to_dict(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write), "net": list(self.net)}
