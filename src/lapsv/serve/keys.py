"""API keys of ``lapsv serve``: two roles, only salted scrypt hashes on disk.

A key reads ``lapsv_<id>_<secret>``: the id (12 hex digits) names its entry in the keys
file and is not secret; the secret (256 random bits) is shown once, when the key is made
(``lapsv serve keys add NAME --role verify|admin``), and never stored. The file keeps, per
key, a random salt and ``scrypt(secret, salt)``; a presented key is hashed the same way and
compared with :func:`hmac.compare_digest` (constant time). A key that passed once is
remembered for the life of the process as an HMAC under a random per-process key, so the
costly scrypt runs once per key, not once per request.

The file is TOML, written atomically with mode 0600 (never readable by others, even for
a moment)::

    [keys."alice"]
    id = "3f2a9c01b7de"
    role = "admin"
    salt = "..."            # hex
    hash = "..."            # hex, scrypt(secret, salt, n, r, p)
    n = 16384
    r = 8
    p = 1
    created = "2025-01-01T00:00:00+00:00"

It is read by a strict reader of exactly this form (comments and blank lines allowed),
so it needs no TOML library; edit it with ``lapsv serve keys add / list / remove``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path

from lapsv.errors import LapsvError

ROLES = ("verify", "admin")
PREFIX = "lapsv"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, about 60 ms per hash on one core
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER = re.compile(r'\[keys\.(?:"([^"\\]*)"|([A-Za-z0-9_-]+))\]')
_FIELD = re.compile(r'([a-z]+)\s*=\s*(?:"([^"\\]*)"|(-?[0-9]+))')
_FIELDS = {"id": str, "role": str, "salt": str, "hash": str, "n": int, "r": int, "p": int}


class KeysError(LapsvError):
    """The keys file cannot be read or changed as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """One key's entry: name (a label), id (in the key), role, salt and scrypt hash (hex)."""

    name: str
    id: str
    role: str
    salt: str
    hash: str
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    created: str = ""

    def allows(self, role: str) -> bool:
        """admin may do everything; verify only what needs the verify role."""
        return self.role == "admin" or role == "verify"


def _scrypt(secret: str, key: ApiKey) -> bytes:
    return hashlib.scrypt(
        secret.encode(), salt=bytes.fromhex(key.salt), n=key.n, r=key.r, p=key.p, dklen=32
    )


def _split(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not re.fullmatch(r"[0-9a-f]{12}", parts[1]):
        return None
    return parts[1], parts[2]


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """The entries of a keys file (the form in the module doc); KeysError names the line."""
    entries: list[dict[str, object]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header, field = _HEADER.fullmatch(line), _FIELD.fullmatch(line)
        if header:
            entries.append({"name": header.group(1) or header.group(2)})
        elif field and entries and (field.group(1) in _FIELDS or field.group(1) == "created"):
            name, text_value, int_value = field.groups()
            kind = _FIELDS.get(name, str)
            if (kind is int) != (int_value is not None):
                raise KeysError(f"{source}:{number}: {name} must be {kind.__name__}")
            entries[-1][name] = int(int_value) if int_value is not None else text_value
        else:
            raise KeysError(
                f"{source}:{number}: not a line of a lapsv keys file ({raw.strip()[:60]!r}); "
                "manage keys with `lapsv serve keys add / remove`"
            )
    keys = []
    for entry in entries:
        missing = [f for f in ("id", "role", "salt", "hash") if f not in entry]
        if missing:
            raise KeysError(f"{source}: key {entry['name']!r} lacks {', '.join(missing)}")
        if entry["role"] not in ROLES:
            raise KeysError(f"{source}: key {entry['name']!r} has unknown role {entry['role']!r}")
        keys.append(ApiKey(**entry))  # type: ignore[arg-type]
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids) or len({k.name for k in keys}) != len(keys):
        raise KeysError(f"{source}: two keys share a name or an id")
    return keys


def format_keys(keys: list[ApiKey]) -> str:
    """The text of a keys file holding ``keys`` (read back by :func:`parse_keys`)."""
    lines = [
        "# lapsv API keys: salted scrypt hashes only, never the keys themselves.",
        "# Manage with `lapsv serve keys add / list / remove`.",
    ]
    for key in keys:
        lines += ["", f'[keys."{key.name}"]']
        for field in dataclasses.fields(ApiKey)[1:]:
            value = getattr(key, field.name)
            lines.append(
                f"{field.name} = " + (str(value) if isinstance(value, int) else f'"{value}"')
            )
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte (mkstemp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class KeyStore:
    """The keys file of a server: read, add, remove, and authenticate presented keys.

    Args:
        path: the keys file (TOML, see the module doc); a missing file holds no keys.

    The file is re-read when its modification time changes, so ``lapsv serve keys remove``
    takes effect on a running server at its next request. Thread-safe.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = KeyStore(Path(folder) / "keys.toml")
        ...     key = store.add("ci", role="verify")
        ...     store.authenticate(key).role, store.authenticate(key + "x")
        ('verify', None)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pepper = secrets.token_bytes(32)  # this process's key for remembered keys
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, ApiKey] = {}
        self._passed: dict[str, bytes] = {}
        self._reload()

    def _reload(self) -> None:
        """Read the file again if it changed (under the lock)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not self._by_id):
            return
        if self.path.is_dir():
            raise KeysError(f"{self.path} is a folder, not a keys file")
        try:
            text = self.path.read_text() if stamp is not None else ""
        except (OSError, UnicodeDecodeError) as error:
            raise KeysError(f"{self.path}: cannot read the keys file ({error})") from error
        keys = parse_keys(text, str(self.path))
        self._by_id = {key.id: key for key in keys}
        self._passed = {}
        self._stamp = stamp

    def keys(self) -> list[ApiKey]:
        """Every key, by name."""
        with self._lock:
            self._reload()
            return sorted(self._by_id.values(), key=lambda k: k.name)

    def add(self, name: str, *, role: str) -> str:
        """Make a key named ``name`` with ``role``; returns the key (shown once, not stored)."""
        if not KEY_NAME.fullmatch(name):
            raise KeysError(
                f"bad key name {name!r}: 1-64 letters, digits, '_', '.' or '-', starting with "
                "a letter or digit"
            )
        if role not in ROLES:
            raise KeysError(f"unknown role {role!r}; use {' or '.join(ROLES)}")
        with self._lock:
            self._reload()
            if any(k.name == name for k in self._by_id.values()):
                raise KeysError(f"{self.path} already has a key named {name!r}; remove it first")
            key_id = secrets.token_hex(6)
            while key_id in self._by_id:
                key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            entry = ApiKey(name, key_id, role, secrets.token_hex(16), "", created=now)
            entry = dataclasses.replace(entry, hash=_scrypt(secret, entry).hex())
            write_private(self.path, format_keys([*self._by_id.values(), entry]))
            self._stamp = None
            self._reload()
        return f"{PREFIX}_{key_id}_{secret}"

    def remove(self, name: str) -> ApiKey:
        """Delete the key named ``name``; returns its entry."""
        with self._lock:
            self._reload()
            found = [k for k in self._by_id.values() if k.name == name]
            if not found:
                raise KeysError(f"{self.path} has no key named {name!r}")
            rest = [k for k in self._by_id.values() if k.name != name]
            write_private(self.path, format_keys(rest))
            self._stamp = None
            self._reload()
        return found[0]

    def authenticate(self, presented: str) -> ApiKey | None:
        """The entry of a valid key, else None (constant-time comparison of hashes)."""
        parts = _split(presented)
        with self._lock:
            self._reload()
            key = self._by_id.get(parts[0]) if parts else None
            remembered = self._passed.get(key.id) if key else None
        if key is None or parts is None:
            return None
        if remembered is not None:
            tag = hmac.new(self._pepper, presented.encode(), hashlib.sha256).digest()
            return key if hmac.compare_digest(tag, remembered) else None
        if not hmac.compare_digest(_scrypt(parts[1], key), bytes.fromhex(key.hash)):
            return None
        with self._lock:
            if self._by_id.get(key.id) == key:  # not removed meanwhile
                tag = hmac.new(self._pepper, presented.encode(), hashlib.sha256).digest()
                self._passed[key.id] = tag
        return key
