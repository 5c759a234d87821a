"""Output filenames for track egress, built from a template the way LiveKit egress builds them."""

from __future__ import annotations

import datetime
import posixpath
import re
from dataclasses import dataclass

from trackegress.media.codecs import KNOWN_EXTENSIONS, output_format
from trackegress.media.frames import Codec

MAX_COMPONENT = 255  # bytes in one path component (NAME_MAX of Linux filesystems)
MAX_PATH = 4095  # bytes in a whole path (PATH_MAX less the NUL)
MAX_KEY = 1024  # bytes in an object key (S3, GCS, Azure blob names)
_VARIABLE = re.compile(r"\{([a-z_]+)\}")
_UNSAFE = str.maketrans({"/": "_", "\\": "_", "\0": "_"})


@dataclass(frozen=True)
class TemplateVars:
    """Values for the ``{variables}`` of a filepath template."""

    room_name: str
    room_id: str
    track_id: str
    track_type: str
    track_source: str
    publisher_identity: str
    now: datetime.datetime


def validate_template(template: str) -> None:
    """Raise ValueError if ``template`` has a NUL byte or a ``..`` component (a leading ``/`` is fine)."""
    if "\0" in template:
        raise ValueError("filepath template must not contain NUL bytes")
    if ".." in template.split("/"):
        raise ValueError(f"filepath template {template!r} must not contain '..' components")


def check_template_limits(template: str, max_total: int = MAX_PATH) -> None:
    """ValueError if a component of ``template`` (or the whole) is too long even with every ``{variable}`` empty."""
    shortest = _VARIABLE.sub("", template)
    check_path_limits(shortest, max_total)


def check_path_limits(path: str, max_total: int = MAX_PATH) -> None:
    """ValueError if ``path`` has a component over ``MAX_COMPONENT`` bytes, is over ``max_total`` bytes or has NUL."""
    if "\0" in path:
        raise ValueError("path must not contain NUL bytes")
    for component in path.split("/"):
        if len(component.encode()) > MAX_COMPONENT:
            raise ValueError(f"a path component is {len(component.encode())} bytes long (at most {MAX_COMPONENT})")
    if len(path.encode()) > max_total:
        raise ValueError(f"the path is {len(path.encode())} bytes long (at most {max_total})")


def output_path(template: str, codec: Codec, vars: TemplateVars) -> str:
    """The output path, relative to the base directory, for ``template`` recorded as ``codec``."""
    ext = f".{output_format(codec).extension}"
    values = _values(vars)
    path = _substitute(_clean(template), values)
    if not path or path.endswith("/"):
        path = f"{path}{values['track_id']}-{values['time']}{ext}"
    elif not path.endswith(ext):
        path = _strip_known_extension(path) + ext
    return _relative(path)


def _clean(template: str) -> str:
    """Like upstream's clean(): Go path.Clean, leading ``../`` dropped, ``.``/``..`` emptied, trailing ``/`` kept."""
    cleaned = posixpath.normpath(template)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    while cleaned.startswith("../"):
        cleaned = cleaned[3:]
    if cleaned in (".", ".."):
        return ""
    return cleaned + "/" if template.endswith("/") else cleaned


def _values(vars: TemplateVars) -> dict[str, str]:
    """Sanitised replacement for every known variable name."""
    now = vars.now
    raw = {
        "room_name": vars.room_name,
        "room_id": vars.room_id,
        "time": now.strftime("%Y-%m-%dT%H%M%S"),
        "utc": f"{now.strftime('%Y%m%d%H%M%S')}{now.microsecond // 1000:03d}",
        "track_id": vars.track_id,
        "track_type": vars.track_type,
        "track_source": vars.track_source,
        "publisher_identity": vars.publisher_identity,
    }
    return {name: _sanitise(value) for name, value in raw.items()}


def _sanitise(value: str) -> str:
    """A value that stays inside one path component: separators become ``_``, as does an all-dots value."""
    value = value.translate(_UNSAFE)
    return "_" * len(value) if value and not value.strip(".") else value


def _substitute(path: str, values: dict[str, str]) -> str:
    """One pass over ``{name}`` placeholders; unknown names are left as they are."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), path)


def _strip_known_extension(path: str) -> str:
    """``path`` without its last ``.suffix`` if that suffix is a known media extension."""
    dot = path.rfind(".")
    return path[:dot] if dot > -1 and path[dot:] in KNOWN_EXTENSIONS else path


def _relative(path: str) -> str:
    """``path`` without leading ``/``; ValueError if empty values left a ``..`` component."""
    relative = path.lstrip("/")
    if ".." in relative.split("/"):
        raise ValueError(f"output path {relative!r} would contain a '..' component")
    return relative
