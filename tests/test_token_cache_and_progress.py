"""The token cache's own rules, and progress reporting, without any server."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import threading
import time

import pytest

from airflow_provider_zohobulk.errors import TokenThrottledError
from airflow_provider_zohobulk.hooks.token_cache import CachedToken, TokenCache, VariableStore, cache_key
from airflow_provider_zohobulk.progress import Progress


def test_key_hides_every_secret():
    key = cache_key("https://accounts.zoho.eu", "client", "secret", "refresh-secret")
    assert "refresh" not in key and "client" not in key and "secret" not in key
    assert key != cache_key("https://accounts.zoho.com", "client", "secret", "refresh-secret")
    assert key != cache_key("https://accounts.zoho.eu", "client", "wrong-secret", "refresh-secret")


def test_file_store_is_private_and_shared_between_instances(tmp_path):
    directory = tmp_path / "tokens"
    TokenCache(directory).put("k", CachedToken("tok-1", time.time() + 3600))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "k.json").stat().st_mode) == 0o600
    assert TokenCache(directory).get("k").access_token == "tok-1"  # another process would see it too


def test_stale_tokens_are_not_served(tmp_path):
    cache = TokenCache(tmp_path)
    cache.put("k", CachedToken("old", time.time() + 60))
    assert cache.get("k") is None
    assert TokenCache(tmp_path).get("k") is None


def test_invalidate_never_drops_a_newer_token(tmp_path):
    mine, theirs = TokenCache(tmp_path), TokenCache(tmp_path)
    mine.put("k", CachedToken("rejected", time.time() + 3600))
    theirs.put("k", CachedToken("fresh", time.time() + 3600))  # another process re-minted meanwhile
    mine.invalidate("k", "rejected")
    assert TokenCache(tmp_path).get("k").access_token == "fresh"
    theirs.invalidate("k", "fresh")
    assert TokenCache(tmp_path).get("k") is None


def test_corrupt_cache_file_is_ignored(tmp_path):
    (tmp_path / "k.json").write_text("{not json")
    assert TokenCache(tmp_path).get("k") is None


def test_without_the_variable_store_a_machine_mints_alone_and_says_so(tmp_path, caplog, capsys):
    """Outside a task (no API server to reach the Variables through) the fleet-wide claim cannot be taken:
    the machine mints under its own lock rather than fail or wait. With a task's API server, the claim is
    tested across two Celery workers (tests/e2e/test_celery_scale_out.py)."""
    minted: list[CachedToken] = []

    def mint() -> CachedToken:
        minted.append(CachedToken(f"tok-{len(minted)}", time.time() + 3600))
        return minted[-1]

    cache = TokenCache(tmp_path, VariableStore())
    with caplog.at_level(logging.WARNING, logger="airflow_provider_zohobulk.hooks.token_cache"):
        assert cache.get_or_mint("k", mint, timeout=10).access_token == "tok-0"
    assert "minting on this machine" in caplog.text + capsys.readouterr().out  # whichever logging Airflow set up
    assert cache.get_or_mint("k", mint, timeout=10).access_token == "tok-0"  # then served from this machine
    assert TokenCache(tmp_path).get("k").access_token == "tok-0"
    assert len(minted) == 1


def test_a_slow_mint_holds_up_only_its_own_key(tmp_path):
    """One connection's mint waiting out Zoho's throttle must not block another connection's tasks."""
    cache = TokenCache(tmp_path)
    other_key_done = threading.Event()

    def mint_other_key() -> None:
        with cache.mint_lock("connection-b", timeout=30):
            other_key_done.set()

    with cache.mint_lock("connection-a"):
        worker = threading.Thread(target=mint_other_key)
        worker.start()
        assert other_key_done.wait(timeout=30)  # while connection-a is still being minted
    worker.join()


def test_waiting_too_long_for_another_minter_is_a_typed_error(tmp_path):
    cache = TokenCache(tmp_path)
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with cache.mint_lock("k"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        with pytest.raises(TokenThrottledError, match="another task on this machine"), cache.mint_lock("k", 0.2):
            pass
    finally:
        release.set()
        holder.join()
    # Another process holding the file lock: the same typed error, not filelock's own Timeout.
    script = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
              "print('held', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "k.lock")], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(TokenThrottledError), cache.mint_lock("k", 0.2):
            pass
    finally:
        other.kill()
        other.wait()
    with cache.mint_lock("k", 5):  # free again
        pass


def test_progress_reports_at_the_interval(caplog):
    now = [0.0]
    progress = Progress(logging.getLogger("p"), interval=10, total_bytes=4000, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="p"):
        for _chunk in progress.count_bytes([b"x" * 1000] * 4):
            now[0] += 4
        assert caplog.text.count("progress:") == 1  # at t=8 no, at t=12 yes, at t=16 no (4s since)
        progress.report("done")
    assert "done:" in caplog.text and "(100%)" in caplog.text
    assert progress.bytes == 4000
