"""Latent encoding as pending work (issue 21): once a corpus caches latents, kept clips sharded
without them are listed by `status`, reported by `catalog verify` and named by `sync`.

Works on a copy of the session's demo catalog through the CLI (fixtures of test_corpus_state.py).
"""

from __future__ import annotations

import re
import shlex

from test_corpus_state import kept_by, pending, q, vc, ws  # noqa: F401 - ws is a fixture

SMALL = ["--height", "32", "--width", "32", "--frames", "4", "--fps", "8"]


def plain(ws, *args) -> str:
    """A command's output with rich's table rules taken out: "encode latents (KEY) 3 ..." """
    return " ".join(re.sub("[\u2500-\u257f]", " ", vc(ws, *args)).split())


def status(ws) -> str:
    return plain(ws, "status")


def _encoded_clips(ws) -> set[str]:
    return {r["clip_id"] for r in q(ws, "SELECT DISTINCT m.clip_id FROM shard_members m JOIN latent_shards l "
                                        "USING (shard_id)")}


def test_clips_sharded_without_latents_of_the_key_in_use_are_pending_until_encoded(ws):  # noqa: F811
    out = status(ws)
    assert "encode latents" not in out and "nothing pending" in out  # no latent cache: no such work
    assert pending(ws).latent_key is None

    vc(ws, "shards", "encode", "--select", "kept", *SMALL, "--no-progress")
    key = pending(ws).latent_key
    assert key is not None and key.params["height"] == 32
    out = status(ws)
    assert f"encode latents ({key.cache_key}) 0" in out and "nothing pending" in out
    encoded = _encoded_clips(ws)

    vc(ws, "filter", "apply", ws.lenient)  # keeps more clips: sync captions and shards them ...
    synced = vc(ws, "sync", "--no-progress")
    newly = kept_by(ws, "lenient_v1@1") - encoded
    assert newly
    assert pending(ws).total == 0 and set(pending(ws).unencoded) == newly  # ... but cannot encode them
    said = re.search(r"run `(vidcorpus shards encode [^`]*)` on a GPU", synced)
    assert said and f"{len(newly)} kept, sharded clips have no latents of cache key {key.cache_key}" in synced
    assert said.group(1) == "vidcorpus shards encode --select kept " + " ".join(SMALL)

    out = status(ws)
    assert f"encode latents ({key.cache_key}) {len(newly)}" in out and "nothing pending" not in out
    verify = plain(ws, "catalog", "verify")  # a gap, not a problem: exit 0
    assert f"pending_latents {len(newly)}" in verify and "catalog consistent" in verify

    vc(ws, *shlex.split(said.group(1))[1:], "--no-progress")  # the command sync named, as typed
    assert pending(ws).unencoded == [] and pending(ws).latent_key == key
    assert "pending_latents" not in vc(ws, "catalog", "verify")
    assert "nothing pending" in status(ws)
