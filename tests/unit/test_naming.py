"""Output filenames follow upstream's template rules and never leave the base directory."""

import dataclasses
import datetime
from pathlib import Path

import pytest

from trackegress.media.frames import Codec
from trackegress.sinks.naming import TemplateVars, output_path, validate_template
from trackegress.storage.local import resolve_under

NOW = datetime.datetime(2024, 1, 2, 3, 4, 5, 678_901)
VARS = TemplateVars(
    room_name="lobby",
    room_id="RM_abc",
    track_id="TR_xyz",
    track_type="audio",
    track_source="microphone",
    publisher_identity="alice",
    now=NOW,
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{room_name}", "lobby.ogg"),
        ("{room_id}", "RM_abc.ogg"),
        ("{time}", "2024-01-02T030405.ogg"),
        ("{utc}", "20240102030405678.ogg"),
        ("{track_id}", "TR_xyz.ogg"),
        ("{track_type}", "audio.ogg"),
        ("{track_source}", "microphone.ogg"),
        ("{publisher_identity}", "alice.ogg"),
        ("{unknown}/{room_name}", "{unknown}/lobby.ogg"),
        ("r/{room_name}-{room_name}", "r/lobby-lobby.ogg"),
    ],
)
def test_each_variable_is_replaced(template: str, expected: str) -> None:
    assert output_path(template, Codec.OPUS, VARS) == expected


def test_utc_pads_milliseconds_to_three_digits() -> None:
    early = dataclasses.replace(VARS, now=datetime.datetime(2024, 12, 31, 23, 59, 58, 7_999))
    assert output_path("{utc}", Codec.OPUS, early) == "20241231235958007.ogg"


def test_values_are_not_substituted_again() -> None:
    tricky = dataclasses.replace(VARS, room_name="{track_id}")
    assert output_path("{room_name}", Codec.OPUS, tricky) == "{track_id}.ogg"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("", "TR_xyz-2024-01-02T030405.ogg"),
        (".", "TR_xyz-2024-01-02T030405.ogg"),
        ("/", "TR_xyz-2024-01-02T030405.ogg"),
        ("rec/", "rec/TR_xyz-2024-01-02T030405.ogg"),
        ("rec/{room_name}/", "rec/lobby/TR_xyz-2024-01-02T030405.ogg"),
        ("./rec//a/", "rec/a/TR_xyz-2024-01-02T030405.ogg"),
    ],
)
def test_empty_or_directory_template_gets_default_name(template: str, expected: str) -> None:
    assert output_path(template, Codec.OPUS, VARS) == expected


def test_empty_after_substitution_gets_default_name() -> None:
    assert output_path("{room_name}", Codec.VP8, dataclasses.replace(VARS, room_name="")) == (
        "TR_xyz-2024-01-02T030405.webm"
    )


@pytest.mark.parametrize(
    ("template", "codec", "expected"),
    [
        ("x.ogg", Codec.OPUS, "x.ogg"),
        ("x", Codec.OPUS, "x.ogg"),
        ("x.foo", Codec.OPUS, "x.foo.ogg"),
        ("x.mp4", Codec.OPUS, "x.ogg"),
        ("x.raw", Codec.OPUS, "x.ogg"),
        ("x.mp3", Codec.OPUS, "x.ogg"),
        ("x.ivf", Codec.VP8, "x.webm"),
        ("x.ts", Codec.VP8, "x.webm"),
        ("x.webm", Codec.H264, "x.mp4"),
        ("x.m3u8", Codec.H264, "x.mp4"),
        ("x.jpeg", Codec.H264, "x.mp4"),
        ("x.ogg", Codec.VP8, "x.webm"),
        ("x.mp4", Codec.H264, "x.mp4"),
        ("x.tar.gz", Codec.OPUS, "x.tar.gz.ogg"),
        ("x.", Codec.OPUS, "x..ogg"),
        ("dir.mp4/x", Codec.OPUS, "dir.mp4/x.ogg"),
        ("x.MP4", Codec.OPUS, "x.MP4.ogg"),
        ("x.ogg", Codec.PCMU, "x.wav"),  # G.711 as published: WAV (upstream transcodes to Opus)
        ("x.wav", Codec.OPUS, "x.ogg"),  # our .wav counts as a known extension
        ("x.webm", Codec.VP9, "x.webm"),
        ("x.mp4", Codec.AV1, "x.webm"),
        ("x.webm", Codec.H265, "x.mp4"),
    ],
)
def test_extension_rules(template: str, codec: Codec, expected: str) -> None:
    assert output_path(template, codec, VARS) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("../x", "x.ogg"),
        ("../../x", "x.ogg"),
        ("a/../../x", "x.ogg"),
        ("a/b/../c", "a/c.ogg"),
        ("/abs/x", "abs/x.ogg"),
        ("//abs/x", "abs/x.ogg"),
        ("/../x", "x.ogg"),
        ("..", "TR_xyz-2024-01-02T030405.ogg"),
    ],
)
def test_template_traversal_is_cleaned_like_upstream(template: str, expected: str) -> None:
    assert output_path(template, Codec.OPUS, VARS) == expected


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ("../../etc", "rec/.._.._etc/x.ogg"),
        ("..\\..\\etc", "rec/.._.._etc/x.ogg"),
        ("/etc/passwd", "rec/_etc_passwd/x.ogg"),
        ("..", "rec/__/x.ogg"),
        (".", "rec/_/x.ogg"),
        ("a\0b", "rec/a_b/x.ogg"),
    ],
)
def test_values_cannot_add_directories(identity: str, expected: str) -> None:
    evil = dataclasses.replace(VARS, publisher_identity=identity)
    assert output_path("rec/{publisher_identity}/x", Codec.OPUS, evil) == expected


def test_empty_values_cannot_form_a_parent_component() -> None:
    with pytest.raises(ValueError, match=r"'\.\.' component"):
        output_path("a/.{room_id}./b", Codec.OPUS, dataclasses.replace(VARS, room_id=""))


def test_identity_traversal_stays_in_the_base_directory(tmp_path: Path) -> None:
    evil = dataclasses.replace(VARS, publisher_identity="../../etc")
    relative = output_path("{publisher_identity}/{track_id}", Codec.OPUS, evil)
    assert resolve_under(tmp_path, relative) == tmp_path.resolve() / ".._.._etc" / "TR_xyz.ogg"


@pytest.mark.parametrize("template", ["rec/{room_name}/{utc}", "/abs/x", "", "a/..b/c..", "..."])
def test_validate_template_accepts(template: str) -> None:
    validate_template(template)


@pytest.mark.parametrize("template", ["../x", "a/../../x", "a/..", "..", "a/../b"])
def test_validate_template_rejects_parent_components(template: str) -> None:
    with pytest.raises(ValueError, match=r"must not contain '\.\.' components"):
        validate_template(template)


def test_validate_template_rejects_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        validate_template("a\0b")


def test_resolve_under_joins_inside_the_base(tmp_path: Path) -> None:
    assert resolve_under(tmp_path, "a/b.ogg") == tmp_path.resolve() / "a" / "b.ogg"


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd"])
def test_resolve_under_refuses_escapes(tmp_path: Path, relative: str) -> None:
    base = tmp_path / "base"
    with pytest.raises(ValueError, match="escapes the base directory"):
        resolve_under(base, relative)


def test_resolve_under_refuses_the_base_itself(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"base directory itself"):
        resolve_under(tmp_path, "a/..")


def test_resolve_under_refuses_symlink_pointing_outside(tmp_path: Path) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes the base directory"):
        resolve_under(base, "link/x.ogg")


def test_resolve_under_follows_symlink_that_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert resolve_under(tmp_path, "link/x.ogg") == tmp_path.resolve() / "real" / "x.ogg"
