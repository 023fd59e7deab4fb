import pytest

from vidcorpus.config import ConfigError, dump_config, load_config
from vidcorpus.ids import clip_id, image_clip_id, is_safe_key, new_run_id, normalise_uri, source_id


def test_normalise_uri_makes_equivalent_urls_one_id():
    assert normalise_uri("HTTP://Example.COM:80/a.mp4#frag") == "http://example.com/a.mp4"
    assert normalise_uri("https://example.com:443/a.mp4") == "https://example.com/a.mp4"
    assert normalise_uri("https://example.com:8443/a.mp4") == "https://example.com:8443/a.mp4"
    assert source_id("HTTP://Example.COM/a.mp4") == source_id("http://example.com:80/a.mp4#x")
    assert source_id("http://example.com/a.mp4") != source_id("http://example.com/b.mp4")
    assert len(source_id("s3://bucket/key.mp4")) == 16


def test_local_paths_become_absolute_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_uri("v.mp4") == f"file://{tmp_path}/v.mp4"
    assert source_id("v.mp4") == source_id(str(tmp_path / "v.mp4"))


def test_clip_ids_are_deterministic_and_safe_keys():
    sid = source_id("http://example.com/a.mp4")
    cid = clip_id(sid, 12, 340)
    assert cid == f"{sid}-0000012-0000340"
    assert is_safe_key(cid) and is_safe_key(image_clip_id(sid))
    assert not is_safe_key("a.b")
    a, b = new_run_id(), new_run_id()
    assert a != b and is_safe_key(a)


def test_config_precedence_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("workdir: /data/x\nfilters:\n  recipe: pretrain_v1\n  frames_per_clip: 5\n")
    cfg = load_config(f, ["filters.frames_per_clip=7", "train.steps=3"])
    assert cfg.workdir == "/data/x"
    assert cfg.filters.recipe == "pretrain_v1"
    assert cfg.filters.frames_per_clip == 7
    assert cfg.train.steps == 3
    assert cfg.catalog_path == "/data/x/catalog.duckdb"
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_malformed_config_names_the_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(f)
    f.write_text("filters: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="unknown_section"):
        load_config(None, ["unknown_section.x=1"])
