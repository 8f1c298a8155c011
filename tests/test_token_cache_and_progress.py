"""The token cache's own rules, and progress reporting, without any server."""

from __future__ import annotations

import logging
import stat
import time

from airflow_provider_zohobulk.hooks.token_cache import CachedToken, TokenCache, cache_key
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
