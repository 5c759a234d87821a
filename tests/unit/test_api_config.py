"""egress.yaml loading: upstream shape, env fallbacks, warnings for unknown keys, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trackegress.cli import main
from trackegress.config import ConfigError, SessionLimits, load_service_config, parse_duration

BASE = "api_key: k\napi_secret: s\nws_url: ws://lk:7880\n"


def test_upstream_yaml_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(BASE + (
        "health_port: 8080\nprometheus_port: 9090\nlogging: {level: warn, json: true}\n"
        "session_limits: {file_output_max_duration: 1h30m, file_output_max_size: 1000, "
        "stream_output_max_duration: 500ms}\n"
        "webhook: {api_key: k, urls: ['http://hooks/a']}\nstorage: {prefix: p}\n"
        "api_port: 7000\nbind: 0.0.0.0\ndata_dir: /var/lib/te\nlocal_dir: /rec\ntrack_wait_timeout: 10s\n"
    ))
    config = load_service_config(path, env={})
    assert (config.egress.api_key, config.egress.api_secret, config.egress.ws_url) == ("k", "s", "ws://lk:7880")
    assert (config.egress.local_dir, config.egress.track_wait_timeout) == (Path("/rec"), 10.0)
    assert (config.api_port, config.bind, config.data_dir) == (7000, "0.0.0.0", Path("/var/lib/te"))
    assert (config.health_port, config.prometheus_port, config.log_level, config.log_json) == (8080, 9090,
                                                                                               "warning", True)
    assert config.session_limits == SessionLimits(5400.0, 1000, 0.5)
    assert config.webhook_urls == ("http://hooks/a",)
    assert config.egress.storage is not None and config.egress.storage.prefix == "p"


def test_env_body_env_credentials_and_overrides() -> None:
    env = {"EGRESS_CONFIG_BODY": "health_port: 1\n", "LIVEKIT_API_KEY": "ek", "LIVEKIT_API_SECRET": "es",
           "LIVEKIT_WS_URL": "ws://env"}
    config = load_service_config(env=env, api_port=1234, bind=None)
    assert (config.egress.api_key, config.egress.ws_url, config.health_port) == ("ek", "ws://env", 1)
    assert (config.api_port, config.bind) == (1234, "127.0.0.1")


def test_config_file_env_var_wins_over_body(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(BASE + "api_port: 1\n")
    config = load_service_config(env={"EGRESS_CONFIG_FILE": str(path), "EGRESS_CONFIG_BODY": BASE + "api_port: 2"})
    assert config.api_port == 1


def test_unknown_keys_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = BASE + "cpu_cost: {track_cpu_cost: 1}\nmystery: 1\nsession_limits: {file_output_max_lenght: 1s}\n"
    load_service_config(env={"EGRESS_CONFIG_BODY": body})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["config: unknown key mystery ignored",
                        "config: unknown key session_limits.file_output_max_lenght ignored"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("api_key: [", "config is not valid YAML"),
        ("- a\n- b", "config must be a YAML mapping"),
        ("api_key: k", "missing setting(s): ws_url, api_secret"),
        (BASE + "health_port: 70000", "health_port: expected a port number (0-65535), got 70000"),
        (BASE + "api_port: eighty", "api_port: expected a non-negative integer, got 'eighty'"),
        (BASE + "session_limits: {file_output_max_duration: 10}", "expected a duration like '30s' or '1h30m'"),
        (BASE + "session_limits: {file_output_max_duration: 1 day}", "got '1 day'"),
        (BASE + "session_limits: 5", "session_limits: expected a mapping"),
        (BASE + "logging: {level: loud}", "logging.level: expected debug, info, warn or error"),
        (BASE + "logging: {json: yes please}", "logging.json: expected true or false"),
        (BASE + "webhook: {urls: ['ftp://x']}", "webhook.urls: 'ftp://x' is not an http(s) URL"),
        (BASE + "webhook: {api_key: other}", "webhook.api_key"),
        (BASE + "webhook: {urls: ['http://u:pw@h/x']}",
         "webhook.urls: 'http://u:{...}@h/x' has user info: the Authorization header carries the webhook signature"),
        (BASE + "storage: {s3: {region: x}}", "storage: "),
        (BASE + "websocket: {sample_rate: 44100}", "websocket.sample_rate must be one of 8000, 16000, 24000, 48000"),
        (BASE + "websocket: {channels: 6}", "websocket.channels must be 1 or 2"),
        (BASE + "media_protocols: [udp, quic]", "media_protocols must list udp, tcp or both, got ['udp', 'quic']"),
        (BASE + "media_protocols: []", "media_protocols must list udp, tcp or both, got []"),
        (BASE + "media_protocols: {udp: 1}", "media_protocols: expected a list of udp / tcp"),
    ],
)
def test_invalid_values_are_clear_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_service_config(env={"EGRESS_CONFIG_BODY": body})
    assert message in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml: No such file"):
        load_service_config(tmp_path / "nope.yaml", env={})


def test_durations() -> None:
    assert [parse_duration(d) for d in ("0", "1.5s", "2m", "1h30m", "250ms", "10us")] == pytest.approx([
        0.0, 1.5, 120.0, 5400.0, 0.25, 1e-5])
    for bad in ("", "1", "s", "1d", "1s x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_serve_refuses_to_start_on_a_bad_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EGRESS_CONFIG_FILE", raising=False)
    monkeypatch.setenv("EGRESS_CONFIG_BODY", BASE + "health_port: -1\n")
    assert main(["serve"]) == 2
    assert "invalid configuration: health_port: expected a non-negative integer, got -1" in capsys.readouterr().err


def test_websocket_transcription_format() -> None:
    config = load_service_config(env={"EGRESS_CONFIG_BODY": BASE + "websocket: {sample_rate: 16000, channels: 1}"})
    assert (config.egress.websocket_sample_rate, config.egress.websocket_channels) == (16_000, 1)
    default = load_service_config(env={"EGRESS_CONFIG_BODY": BASE})
    assert (default.egress.websocket_sample_rate, default.egress.websocket_channels) == (48_000, 2)


def test_signal_resume_timeout_defaults_to_30s_and_is_a_duration() -> None:
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE}).egress.signal_resume_timeout == 30.0
    body = BASE + "signal_resume_timeout: 1m30s\n"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": body}).egress.signal_resume_timeout == 90.0


def test_top_layer_wait_defaults_to_5s_and_is_a_duration() -> None:
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE}).egress.top_layer_wait == 5.0
    body = BASE + "top_layer_wait: 12s\n"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": body}).egress.top_layer_wait == 12.0
    with pytest.raises(ConfigError, match="top_layer_wait"):
        load_service_config(env={"EGRESS_CONFIG_BODY": BASE + "top_layer_wait: -1s\n"})


def test_idle_timeout_defaults_to_20s_and_is_a_duration() -> None:
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE}).idle_timeout == 20.0
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE + "idle_timeout: 2s\n"}).idle_timeout == 2.0
    with pytest.raises(ConfigError, match="idle_timeout"):
        load_service_config(env={"EGRESS_CONFIG_BODY": BASE + "idle_timeout: -1s\n"})


def test_media_protocols_default_to_udp_and_tcp() -> None:
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE}).egress.media_protocols == ("udp", "tcp")
    body = BASE + "media_protocols: [TCP]\n"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": body}).egress.media_protocols == ("tcp",)
    body = BASE + "media_protocols: udp\n"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": body}).egress.media_protocols == ("udp",)
