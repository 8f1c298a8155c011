"""The token cache's fallback folder in the temporary directory: used only when it is this user's own.

The temporary directory is shared by every user of the machine, so anyone could create
``zohobulk-tokens-<uid>`` there first (world-writable, or as a link to a folder of theirs) and then
plant or swap the tokens cached in it. As ssh does with ``~/.ssh``, the folder is checked (not
following links) before it is read or written: a directory, owned by this user, not writable by its
group or others; anything else is refused with a typed error that says how to fix it.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

import pytest

from airflow_provider_zohobulk.errors import UnsafeTokenCacheError, ZohoConfigurationError
from airflow_provider_zohobulk.hooks.token_cache import CachedToken, TokenCache

TOKEN = CachedToken("tok-1", time.time() + 3600)


@pytest.fixture
def fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Neither ZOHOBULK_TOKEN_CACHE_DIR nor AIRFLOW_HOME set, and the temporary directory is tmp_path."""
    monkeypatch.delenv("ZOHOBULK_TOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "shared-tmp"))
    (tmp_path / "shared-tmp").mkdir()
    return tmp_path / "shared-tmp" / f"zohobulk-tokens-{os.getuid()}"


def test_the_fallback_is_created_private_and_used(fallback: Path) -> None:
    cache = TokenCache()
    assert cache.directory == fallback
    cache.put("k", TOKEN)
    info = os.lstat(fallback)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert TokenCache().get("k").access_token == "tok-1"


def assert_refused(fallback: Path, problem: str) -> None:
    """Every way into the folder refuses it, naming the folder, the problem and the fix."""
    cache = TokenCache()
    for attempt in (lambda: cache.get("k"), lambda: cache.put("k", TOKEN), lambda: cache.mint_lock("k").__enter__()):
        with pytest.raises(UnsafeTokenCacheError, match=problem) as caught:
            attempt()
        assert isinstance(caught.value, ZohoConfigurationError)
        assert str(fallback) in str(caught.value) and "ZOHOBULK_TOKEN_CACHE_DIR" in str(caught.value)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o722], ids=oct)
def test_a_fallback_others_can_write_is_refused(fallback: Path, mode: int) -> None:
    fallback.mkdir()
    os.chmod(fallback, mode)
    (fallback / "k.json").write_text(f'{{"access_token": "planted", "expires_at": {time.time() + 3600}}}')
    assert_refused(fallback, "writable by its group or by others")
    assert sorted(os.listdir(fallback)) == ["k.json"]  # no token written, no lock created
    assert stat.S_IMODE(os.lstat(fallback).st_mode) == mode  # left as it was found


def test_a_fallback_that_is_a_symbolic_link_is_refused(fallback: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir(mode=0o700)
    fallback.symlink_to(elsewhere)
    assert_refused(fallback, "is a symbolic link")
    dangling = tmp_path / "nowhere"
    fallback.unlink()
    fallback.symlink_to(dangling)
    assert_refused(fallback, "is a symbolic link")
    assert os.listdir(elsewhere) == [] and not dangling.exists()


def test_a_file_in_place_of_the_fallback_is_refused(fallback: Path) -> None:
    fallback.write_text("")
    assert_refused(fallback, "is not a directory")


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a folder to another user")
def test_a_fallback_owned_by_another_user_is_refused(fallback: Path) -> None:
    fallback.mkdir(mode=0o700)
    os.chown(fallback, 65534, 65534)
    assert_refused(fallback, "belongs to uid 65534")
    assert os.listdir(fallback) == []


def test_the_fix_the_error_names_works(fallback: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fallback.mkdir()
    os.chmod(fallback, 0o777)
    monkeypatch.setenv("ZOHOBULK_TOKEN_CACHE_DIR", str(tmp_path / "mine"))
    cache = TokenCache()
    cache.put("k", TOKEN)
    assert cache.get("k").access_token == "tok-1" and os.listdir(fallback) == []


def test_the_hook_mints_nothing_through_an_unsafe_fallback(fallback: Path, monkeypatch, zoho_sandbox) -> None:
    from tests.test_hook import make_hook

    fallback.mkdir()
    os.chmod(fallback, 0o777)
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(UnsafeTokenCacheError, match="writable by its group or by others"):
        hook.get_access_token()
    assert zoho_sandbox.stats()["tokens_minted"] == 0
    assert os.listdir(fallback) == []
