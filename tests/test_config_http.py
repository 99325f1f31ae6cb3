"""The ``[http]`` section: where the API listens, and the token it demands."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import Config, ConfigError, load_config


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_port_0_asks_for_a_free_port(tmp_path: Path) -> None:
    config = load(tmp_path, '[http]\nlisten = "127.0.0.1:0"\n')
    assert config.http.listen == "127.0.0.1:0"


def test_a_token_file_is_read_at_load_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("  abc123\n", encoding="utf-8")
    config = load(tmp_path, '[http]\ntoken_file = "secrets/token"\n')
    assert config.http.token == "abc123"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[http]\ntoken = "a"\ntoken_file = "t"\n', "http.token_file: set token or token_file, not both"),
        ('[http]\ntoken = ""\n', "http.token: must be non-empty"),
        ('[http]\ntoken = "two words"\n', "http.token: must be non-empty printable text without spaces"),
        ('[http]\ntoken = 12\n', "http.token: expected str"),
        ('[http]\ntoken_file = "missing"\n', "http.token_file: cannot read"),
        ('[http]\ntoken_file = "empty"\n', "http.token_file:"),
        ('[http]\nlisten = "127.0.0.1:65536"\n', "port 0 picks a free port"),
    ],
)
def test_a_bad_token_or_address_is_an_error_naming_the_key(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    message = error_of(tmp_path, text)
    assert words in message
    assert message.startswith(str(tmp_path / "config.toml"))
