"""Settings: defaults, TOML, env overrides, and errors that name the key and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from vilokanam.config import ConfigError, load_settings

EXAMPLE = Path(__file__).parents[2] / "vilokanam" / "config" / "vilokanam.example.toml"


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings(environ={})
    assert settings.rtmp.port == 1935 and settings.http.port == 8080
    assert settings.hls.segment_format == "fmp4" and settings.hls.segment_duration == 2.0
    assert settings.hls.window == 6
    assert [(r.name, r.height, r.video_bitrate) for r in settings.transcode.ladder] == [
        ("720p", 720, 3_000_000),
        ("480p", 480, 1_400_000),
        ("360p", 360, 800_000),
    ]
    assert settings.database_url.startswith("sqlite:///")


def test_example_config_loads_and_matches_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == load_settings(environ={})


def test_env_overrides_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[rtmp]\nport = 1940\n[hls]\nsegment_format = "mpegts"\n')
    settings = load_settings(config, environ={"VILOKANAM_RTMP_PORT": "1950"})
    assert settings.rtmp.port == 1950
    assert settings.hls.segment_format == "mpegts"


def test_env_ladder_as_json() -> None:
    ladder = '[{"name": "540p", "height": 540, "video_bitrate": 2000000}]'
    settings = load_settings(environ={"VILOKANAM_TRANSCODE_LADDER": ladder})
    assert [rung.name for rung in settings.transcode.ladder] == ["540p"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"VILOKANAM_RTMP_PORT": "70000"}, "rtmp.port"),
        (
            {"VILOKANAM_HLS_SEGMENT_FORMAT": "ts"},
            "hls.segment_format: Input should be 'fmp4' or 'mpegts'",
        ),
        ({"VILOKANAM_RTMP_PROT": "1"}, "rtmp.prot: unknown setting"),
        ({"VILOKANAM_TRANSCODE_X264_PRESET": "warp"}, "transcode.x264_preset"),
        ({"VILOKANAM_HTTP_PORT": "1935", "VILOKANAM_HTTP_HOST": "0.0.0.0"}, "must differ"),
        (
            {
                "VILOKANAM_WEBHOOKS_SECRET": "s3cret",
                "VILOKANAM_WEBHOOKS_ENDPOINTS": '[{"url": "ftp://hooks.example/x"}]',
            },
            "webhooks.endpoints.0.url: Value error, must be an http:// or https:// URL",
        ),
        (
            {"VILOKANAM_WEBHOOKS_ENDPOINTS": '[{"url": "https://hooks.example/x"}]'},
            "has no signing secret: set webhooks.secret",
        ),
        (
            {
                "VILOKANAM_WEBHOOKS_SECRET": "s3cret",
                "VILOKANAM_WEBHOOKS_ENDPOINTS": '[{"url": "https://h.example/a"}, '
                '{"url": "https://h.example/a", "secret": "other", "events": ["stream.ended"]}]',
            },
            "webhooks.endpoints lists https://h.example/a more than once",
        ),
        (
            {
                "VILOKANAM_WEBHOOKS_SECRET": "s3cret",
                "VILOKANAM_WEBHOOKS_ENDPOINTS": '[{"url": "https://h.example", "events": ["x"]}]',
            },
            "webhooks.endpoints.0.events.0: Input should be 'stream.started'",
        ),
        ({"VILOKANAM_PUBLISH_HOOK_URL": "localhost:9000/auth"}, "publish_hook.url"),
        ({"VILOKANAM_API_TOKEN": "short"}, "api.token: Value error, must be at least 16"),
        ({"VILOKANAM_LOG_FORMAT": "xml"}, "log_format: Input should be 'text' or 'json'"),
        ({"VILOKANAM_STORAGE": "gcs"}, "storage: Input should be 'local' or 's3'"),
        ({"VILOKANAM_STORAGE": "s3"}, 'storage = "s3" needs s3.bucket'),
        ({"VILOKANAM_S3_ENDPOINT_URL": "minio:9000"}, "s3.endpoint_url: Value error, must be"),
        ({"VILOKANAM_S3_UPLOAD_CONCURRENCY": "0"}, "s3.upload_concurrency"),
        ({"VILOKANAM_RECORDING_RETENTION_DAYS": "-1"}, "recording.retention_days"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ)
    assert expected in str(error.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[rtmp\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_sections_with_underscores_take_env_overrides() -> None:
    settings = load_settings(
        environ={
            "VILOKANAM_PUBLISH_HOOK_URL": "http://127.0.0.1:9000/auth",
            "VILOKANAM_PUBLISH_HOOK_TIMEOUT": "1.5",
            "VILOKANAM_WEBHOOKS_SECRET": "s3cret",
            "VILOKANAM_WEBHOOKS_ENDPOINTS": '[{"url": "https://hooks.example/v"}]',
        }
    )
    assert settings.publish_hook.url == "http://127.0.0.1:9000/auth"
    assert settings.publish_hook.timeout == 1.5
    [endpoint] = settings.webhooks.endpoints
    assert endpoint.url == "https://hooks.example/v" and "stream.ended" in endpoint.events


def test_s3_settings_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "VILOKANAM_STORAGE": "s3",
            "VILOKANAM_S3_BUCKET": "media",
            "VILOKANAM_S3_PREFIX": "/live/vk/",
            "VILOKANAM_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "VILOKANAM_S3_PUBLIC_BASE_URL": "https://cdn.example.com/",
            "VILOKANAM_RECORDING_ENABLED": "true",
        }
    )
    assert settings.storage == "s3" and settings.s3.bucket == "media"
    assert settings.s3.prefix == "live/vk/", "one trailing slash, none leading"
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3.public_base_url == "https://cdn.example.com"
    assert settings.recording.enabled is True
