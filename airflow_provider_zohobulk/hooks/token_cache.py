"""Access-token cache shared by threads, processes and (optionally) machines.

Zoho allows 10 access tokens per refresh token per 10 minutes and blocks the rest of the window
after that, and it silently invalidates the oldest of more than 15 live tokens. Every worker minting
its own token is the known failure mode of Zoho clients. So tokens are minted under a lock and kept:

1. in process memory (threads of one task, the triggerer's event loop);
2. in a file per refresh token under a 0700 directory, written atomically, with minting serialised
   by a file lock: N processes on one machine mint exactly one token. The last-resort folder in the
   shared temporary directory is used only when it is this user's own and private (see
   :func:`refuse_unless_private`), since any user can create it first;
3. optionally in an Airflow Variable (connection extra ``oauth_cache: "variable"``), encrypted at rest like any
   Variable, so a fleet of workers shares one token. Variables have no lock and no compare-and-set, so
   machines that miss at the same instant agree on one minter with Fischer's timed mutual exclusion
   (see :class:`VariableStore`): one mint per connection however many machines start together.

A token is reused until :data:`REFRESH_MARGIN_SECONDS` before it expires. Keys are a hash of the
accounts URL, client id, client secret and refresh token: no secret is ever part of a key or a file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300
_VARIABLE_PREFIX = "zohobulk_token_"
#: Fischer's bound: a claim written within this long of reading "no claim" has landed before anyone
#: reads back. A Variable write through the API server takes milliseconds; a second is a wide margin.
CLAIM_SETTLE_SECONDS = 1.0
#: A claim older than this is abandoned (its machine died mid-mint) and may be taken over.
CLAIM_LEASE_SECONDS = 60.0
#: How often a machine waiting for another's mint looks for the token.
CLAIM_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class CachedToken:
    access_token: str
    expires_at: float
    api_domain: str | None = None

    def is_fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - REFRESH_MARGIN_SECONDS


def cache_key(accounts_url: str, client_id: str, client_secret: str, refresh_token: str) -> str:
    """Every credential is part of the key, so a connection with a wrong secret never reuses a good token."""
    material = "\0".join((accounts_url, client_id, client_secret, refresh_token)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


def default_cache_dir() -> Path:
    """``$ZOHOBULK_TOKEN_CACHE_DIR``, else ``$AIRFLOW_HOME/.zohobulk-tokens``, else :func:`temp_cache_dir`."""
    explicit = os.environ.get("ZOHOBULK_TOKEN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    airflow_home = os.environ.get("AIRFLOW_HOME")
    if airflow_home:
        return Path(airflow_home) / ".zohobulk-tokens"
    return temp_cache_dir()


def temp_cache_dir() -> Path:
    """The last-resort folder, per user, in the temporary directory that every user can write."""
    return Path(tempfile.gettempdir()) / f"zohobulk-tokens-{os.getuid()}"


def refuse_unless_private(directory: Path) -> None:
    """Raise :class:`~airflow_provider_zohobulk.errors.UnsafeTokenCacheError` unless ``directory`` is a
    real directory (not a link), owned by this user and not writable by its group or others.

    Any user can create :func:`temp_cache_dir` before this one does: world-writable, or as a link to a
    folder of theirs, and then plant or swap the tokens cached in it. Like ssh with ``~/.ssh``, such a
    folder is refused rather than used; ``os.lstat`` so that a link is judged, not its target.
    """
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):o})"
    else:
        return
    from airflow_provider_zohobulk.errors import UnsafeTokenCacheError

    raise UnsafeTokenCacheError(
        f"the Zoho token cache folder {directory} {problem}, so another user could plant or swap the access "
        "tokens cached there; remove it, or set ZOHOBULK_TOKEN_CACHE_DIR (or AIRFLOW_HOME) to a folder only "
        "this user can write")


class _SharedStore:
    """A second-level store behind the local file (the Airflow Variable backend)."""

    def get(self, key: str) -> CachedToken | None:  # pragma: no cover - interface
        raise NotImplementedError

    def put(self, key: str, token: CachedToken) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def delete(self, key: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def mint_once(self, key: str, mint: Callable[[], CachedToken], timeout: float) -> CachedToken:
        """A token minted by exactly one machine of the fleet (this one, or the one it waited for), saved
        in this store before the next machine may look."""
        raise NotImplementedError  # pragma: no cover - interface


class VariableStore(_SharedStore):
    """Tokens in Airflow Variables, so every worker of a deployment shares them.

    :meth:`mint_once` elects one minter among machines that all found no token, with Fischer's
    algorithm over a claim Variable: read it; if nobody holds it, write your own id, wait
    :data:`CLAIM_SETTLE_SECONDS` (longer than any read-then-write takes), read again, and mint only if
    your id is still there. The others see a live claim and wait for the token to appear. A machine
    that dies mid-mint holds the claim for at most :data:`CLAIM_LEASE_SECONDS`. If the Variables
    cannot be reached, a machine mints on its own, as it would without the shared store.
    """

    def get(self, key: str) -> CachedToken | None:
        from airflow.sdk import Variable

        try:
            raw = Variable.get(_VARIABLE_PREFIX + key, default=None)
        except Exception as exc:  # a missing/unreachable API server must not stop the task
            log.warning("Zoho token cache: could not read the shared Variable (%s)", type(exc).__name__)
            return None
        return _decode(raw)

    def put(self, key: str, token: CachedToken) -> None:
        from airflow.sdk import Variable

        try:
            Variable.set(_VARIABLE_PREFIX + key, json.dumps(asdict(token)),
                         description="Zoho access token cache (airflow-provider-zohobulk)")
        except Exception as exc:
            log.warning("Zoho token cache: could not write the shared Variable (%s)", type(exc).__name__)

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        with contextlib.suppress(Exception):
            Variable.delete(_VARIABLE_PREFIX + key)

    def mint_once(self, key: str, mint: Callable[[], CachedToken], timeout: float) -> CachedToken:
        me = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            token = self.get(key)
            if token and token.is_fresh():
                return token
            try:
                claim = self._read_claim(key)
                if claim is None:
                    self._write_claim(key, me)
                    time.sleep(CLAIM_SETTLE_SECONDS)
                    claim = self._read_claim(key)
            except Exception as exc:  # no shared store to agree through: mint alone, as without it
                log.warning("Zoho token cache: could not use the shared mint claim (%s); minting on this machine",
                            type(exc).__name__)
                return mint()
            if claim == me:
                try:
                    token = self.get(key)  # minted by a machine whose claim ended just before ours began
                    if token and token.is_fresh():
                        return token
                    token = mint()
                    self.put(key, token)
                    return token
                finally:
                    self._release_claim(key, me)
            if time.monotonic() >= deadline:
                raise _waited_too_long(timeout, "another machine (its claim is in the Variable store)")
            time.sleep(CLAIM_POLL_SECONDS)

    @staticmethod
    def _claim_name(key: str) -> str:
        return f"{_VARIABLE_PREFIX}{key}_minting"

    def _read_claim(self, key: str) -> str | None:
        """The id of the machine minting now, or None when nobody is (or its lease ran out)."""
        from airflow.sdk import Variable

        raw = Variable.get(self._claim_name(key), default=None)
        try:
            claim = json.loads(raw) if raw else None
            return str(claim["owner"]) if claim and float(claim["until"]) > time.time() else None
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as no claim, and overwritten

    def _write_claim(self, key: str, owner: str) -> None:
        from airflow.sdk import Variable

        Variable.set(self._claim_name(key), json.dumps({"owner": owner, "until": time.time() + CLAIM_LEASE_SECONDS}),
                     description="Which machine is minting the Zoho access token (airflow-provider-zohobulk)")

    def _release_claim(self, key: str, owner: str) -> None:
        with contextlib.suppress(Exception):
            if self._read_claim(key) == owner:
                from airflow.sdk import Variable

                Variable.delete(self._claim_name(key))


def _decode(raw: str | bytes | None) -> CachedToken | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return CachedToken(str(data["access_token"]), float(data["expires_at"]), data.get("api_domain"))
    except (ValueError, KeyError, TypeError):
        return None


class TokenCache:
    """Memory -> local file (+ lock) -> optional shared store. One instance per process is enough."""

    def __init__(self, directory: Path | None = None, shared: _SharedStore | None = None) -> None:
        self.directory = directory or default_cache_dir()
        #: The folder other users could have created first: checked before every use.
        self._in_shared_temp = self.directory == temp_cache_dir()
        self.shared = shared
        self._memory: dict[str, CachedToken] = {}
        #: One lock per key: a mint waiting out Zoho's throttle for one connection must not hold up
        #: the tasks of every other connection in this process.
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def _ensure_dir(self) -> None:
        if not self._in_shared_temp:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        with contextlib.suppress(FileExistsError):  # whatever is there already is judged next
            self.directory.mkdir(mode=0o700)
        refuse_unless_private(self.directory)

    def get(self, key: str) -> CachedToken | None:
        """A fresh token from memory, the file or the shared store, without taking the mint lock."""
        token = self._memory.get(key)
        if token and token.is_fresh():
            return token
        if self._in_shared_temp:
            self._ensure_dir()  # never read a token from a folder another user controls
        try:
            token = _decode(self._path(key).read_bytes())
        except OSError:
            token = None
        if (not token or not token.is_fresh()) and self.shared is not None:
            token = self.shared.get(key)
        if token and token.is_fresh():
            self._memory[key] = token
            return token
        return None

    def put(self, key: str, token: CachedToken) -> None:
        self._put_local(key, token)
        if self.shared is not None:
            self.shared.put(key, token)

    def _put_local(self, key: str, token: CachedToken) -> None:
        """Memory and this machine's file only."""
        self._memory[key] = token
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tok-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(token), handle)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get_or_mint(self, key: str, mint: Callable[[], CachedToken], timeout: float) -> CachedToken:
        """The cached token, or one minted by one caller: one per machine (the file lock) and, with a
        shared store, one per fleet (its claim). ``timeout`` bounds the wait for another minter."""
        token = self.get(key)
        if token is not None:
            return token
        deadline = time.monotonic() + timeout
        with self.mint_lock(key, timeout=timeout):
            token = self.get(key)  # another process may have minted meanwhile
            if token is not None:
                return token
            # A shared store saves the token itself, before it lets the next machine look.
            token = (mint() if self.shared is None
                     else self.shared.mint_once(key, mint, timeout=max(deadline - time.monotonic(), 0)))
            self._put_local(key, token)
            return token

    def invalidate(self, key: str, rejected_token: str) -> None:
        """Forget ``rejected_token``, but never a newer token another process has already minted."""
        with self.mint_lock(key):
            if (cached := self._memory.get(key)) and cached.access_token == rejected_token:
                del self._memory[key]
            path = self._path(key)
            try:
                on_disk = _decode(path.read_bytes())
            except OSError:
                on_disk = None
            if on_disk and on_disk.access_token == rejected_token:
                path.unlink(missing_ok=True)
            if self.shared is not None:
                shared = self.shared.get(key)
                if shared and shared.access_token == rejected_token:
                    self.shared.delete(key)

    @contextlib.contextmanager
    def mint_lock(self, key: str, timeout: float = 600) -> Iterator[None]:
        """Serialise minting of one key's token across threads and processes of this machine.

        Waiting longer than ``timeout`` seconds (the other minter is most likely waiting out Zoho's
        token throttle) raises :class:`~airflow_provider_zohobulk.errors.TokenThrottledError`.
        """
        self._ensure_dir()
        with self._key_locks_guard:
            thread_lock = self._key_locks.setdefault(key, threading.Lock())
        deadline = time.monotonic() + timeout
        if not thread_lock.acquire(timeout=max(timeout, 0)):
            raise _waited_too_long(timeout, "another task on this machine")
        try:
            try:
                file_lock = FileLock(str(self.directory / f"{key}.lock"),
                                     timeout=max(deadline - time.monotonic(), 0))
                file_lock.acquire()
            except Timeout:
                raise _waited_too_long(timeout, "another task on this machine") from None
            try:
                yield
            finally:
                file_lock.release()
        finally:
            thread_lock.release()


def _waited_too_long(timeout: float, minter: str) -> Exception:
    """The error for a wait of ``timeout`` seconds on ``minter`` (who holds the right to mint)."""
    from airflow_provider_zohobulk.errors import TokenThrottledError

    return TokenThrottledError(
        f"waited {timeout:.0f}s for {minter} to mint a Zoho access token with the same credentials; it is most "
        "likely waiting out Zoho's token throttle (10 tokens per 10 minutes)")


_caches: dict[tuple[str, str], TokenCache] = {}
_caches_lock = threading.Lock()


def get_token_cache(mode: str = "local", directory: Path | None = None) -> TokenCache | None:
    """The process-wide cache for ``mode`` (``local``, ``variable`` or ``none``)."""
    mode = (mode or "local").lower()
    if mode == "none":
        return None
    if mode not in ("local", "variable"):
        from airflow_provider_zohobulk.errors import ZohoConfigurationError

        raise ZohoConfigurationError(
            f"the connection's oauth_cache must be local, variable or none, not {mode!r}")
    directory = directory or default_cache_dir()
    with _caches_lock:
        cache = _caches.get((mode, str(directory)))
        if cache is None:
            cache = TokenCache(directory, VariableStore() if mode == "variable" else None)
            _caches[(mode, str(directory))] = cache
        return cache
