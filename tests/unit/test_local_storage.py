"""Local storage keeps every output under its base directory."""

from pathlib import Path

import pytest

from trackegress.storage.local import LocalStorage


def test_base_dir_is_resolved_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalStorage(Path("out/../rec")).base_dir == tmp_path.resolve() / "rec"


def test_path_for_creates_parent_directories(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "rec")
    path = storage.path_for("lobby/alice/TR_1.ogg")
    assert path == tmp_path.resolve() / "rec" / "lobby" / "alice" / "TR_1.ogg"
    assert path.parent.is_dir()
    assert not path.exists()


@pytest.mark.parametrize("relative", ["../x.ogg", "a/../../x.ogg", "/etc/x.ogg"])
def test_path_for_refuses_traversal(tmp_path: Path, relative: str) -> None:
    storage = LocalStorage(tmp_path / "rec")
    with pytest.raises(ValueError, match="escapes the base directory"):
        storage.path_for(relative)
    assert not (tmp_path / "x.ogg").exists()


def test_path_for_refuses_symlink_pointing_outside(tmp_path: Path) -> None:
    base, outside = tmp_path / "rec", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "evil").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes the base directory"):
        LocalStorage(base).path_for("evil/sub/x.ogg")
    assert not (outside / "sub").exists()


def test_location_is_the_absolute_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    path = storage.path_for("a/x.ogg")
    assert storage.location(path) == f"{tmp_path.resolve()}/a/x.ogg"
