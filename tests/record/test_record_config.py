"""``[record]``: its defaults, paths relative to the config file, and errors naming the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import ConfigError, RecordConfig, load_config, parse_config


def test_no_table_records_nothing_and_a_bare_one_takes_the_defaults() -> None:
    assert parse_config({}).record is None
    record = parse_config({"record": {}}).record
    assert record == RecordConfig()
    assert (record.rotate, record.compress, record.max_bytes, record.venues) == (3600.0, "zstd", 0, ())


def test_the_folder_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[record]\ndir = "rec"\n')
    record = load_config(path, environ={}).record
    assert record is not None and record.dir == str(tmp_path / "rec")


@pytest.mark.parametrize(("table", "names"), [
    ({"compress": "lz4"}, "record.compress"),
    ({"rotate": 0}, "record.rotate"),
    ({"max_bytes": -1}, "record.max_bytes"),
    ({"venues": ["binance", "nasdaq"]}, "record.venues"),
    ({"buffer": 0}, "record.buffer"),
    ({"directory": "x"}, "record.directory"),
])
def test_a_bad_key_is_named(table: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"record": table}, "feedd.toml")
    assert names in str(caught.value) and "feedd.toml" in str(caught.value)
