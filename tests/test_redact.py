"""Credentials in input URLs never reach the catalog, run configs, reports or logs; ids ignore them."""

from vidcorpus.ids import source_id
from vidcorpus.redact import MASK, identity_url, redact_text, redact_url

PRESIGNED = ("https://bob:hunter2@cdn.example.com/v/a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F20261123%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261123T000000Z"
             "&X-Amz-Expires=3600&X-Amz-Signature=0123456789abcdef&quality=hd%20plus")


def test_redact_url_masks_userinfo_and_secret_parameters():
    out = redact_url(PRESIGNED)
    for secret in ("bob", "hunter2", "AKIAEXAMPLE", "0123456789abcdef"):
        assert secret not in out
    assert out.startswith(f"https://{MASK}@cdn.example.com/v/a.mp4?") and "quality=hd" in out
    assert redact_url("https://example.com/a.jpg?w=3") == "https://example.com/a.jpg?w=3"
    assert redact_url("/local/file.mp4") == "/local/file.mp4"
    sas = redact_url("https://acct.blob.core.windows.net/c/x.mp4?sv=2024&sig=SECRETSIG&token=T0K&api_key=K")
    assert "SECRETSIG" not in sas and "T0K" not in sas and "api_key=" + MASK in sas


def test_redact_text_finds_urls_inside_messages():
    msg = f"HTTPError: 403 Client Error: Forbidden for url: {PRESIGNED}; retry later"
    out = redact_text(msg)
    assert "0123456789abcdef" not in out and "hunter2" not in out and out.endswith("; retry later")
    assert redact_text(None) is None and redact_text("no urls here") == "no urls here"


def test_a_resigned_url_is_the_same_source():
    resigned = PRESIGNED.replace("0123456789abcdef", "fedcba9876543210").replace("20261123T000000Z", "20261124T0")
    assert source_id(resigned) == source_id(PRESIGNED)
    assert source_id(PRESIGNED) == source_id("https://cdn.example.com/v/a.mp4?quality=hd%20plus")
    assert source_id(PRESIGNED) != source_id("https://cdn.example.com/v/a.mp4?quality=sd")
    # other parameters keep their spelling, so ids of earlier runs do not move
    assert identity_url("https://e.com/x?b=1%202&a=z") == "https://e.com/x?b=1%202&a=z"


def test_hostile_input_text_is_cleaned_and_bounded(tmp_path):
    import json

    from vidcorpus.ingest.sources import MAX_TEXT_CHARS, read_inputs

    lst = tmp_path / "list.jsonl"
    lst.write_bytes(b'{"url": "https://e.com/a.mp4", "text": "bad \\xff\\xfe utf8"}\n'.replace(b"\\xff\\xfe", b"\xff\xfe")
                    + b'{"url": "https://e.com/b.mp4", "text": "nul \\u0000 bell \\u0007 ok\\nline"}\n'
                    + json.dumps({"url": "https://e.com/c.mp4", "text": "x" * 5_000_000}).encode() + b"\n"
                    + b"this line is not json\n")
    rows = {r["uri"].rsplit("/", 1)[-1] if r["uri"] else "bad": r for r in read_inputs([str(lst)])}
    assert "\ufffd" in rows["a.mp4"]["text"]  # invalid UTF-8 replaced, not a crash
    assert rows["b.mp4"]["text"] == "nul  bell  ok\nline"
    assert json.loads(rows["b.mp4"]["meta_json"])["text_edits"] == ["control_chars_removed"]
    assert len(rows["c.mp4"]["text"]) == MAX_TEXT_CHARS
    assert json.loads(rows["c.mp4"]["meta_json"])["text_edits"] == ["truncated_from_5000000"]
    assert [r["error_class"] for r in rows.values() if r["error_class"]] == ["bad_input_row"]


def test_the_catalog_never_stores_credentials(tmp_path):
    import json

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.schemas import empty_row

    ok = empty_row(source_id=source_id(PRESIGNED), uri=PRESIGNED, media_type="video", text="t")
    bad = empty_row(source_id=source_id(PRESIGNED + "&x=1"), uri=PRESIGNED + "&x=1", error_class="http_4xx",
                    error=f"403 Forbidden for url: {PRESIGNED}", error_stage="download")
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.begin_run("r1", "pipeline", json.dumps({"inputs": [PRESIGNED]}), "test")
        cat.commit_results("r1", [ok, bad], failed_before={bad["source_id"]})
        cat.record_failure("k", "train_decode", "decode_error", f"cannot read {PRESIGNED}", "r1")
        dump = json.dumps([cat.query_dicts(f"SELECT * FROM {t}") for t in ("runs", "sources", "failures")], default=str)
    for secret in ("hunter2", "AKIAEXAMPLE", "0123456789abcdef"):
        assert secret not in dump
    assert "cdn.example.com/v/a.mp4" in dump  # still says what it was
