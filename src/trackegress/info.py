"""Facts about an ``EgressInfo`` that every layer shares: ids, final statuses, copies."""

from __future__ import annotations

import secrets
import string

from livekit.protocol import egress, models

Status = egress.EgressStatus
ENDED = (Status.EGRESS_COMPLETE, Status.EGRESS_FAILED, Status.EGRESS_ABORTED, Status.EGRESS_LIMIT_REACHED)
UNFINISHED = (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING)
_ALPHANUM = string.ascii_letters + string.digits


def new_egress_id() -> str:
    """``EG_`` + 12 alphanumerics, like livekit-server's."""
    return "EG_" + "".join(secrets.choice(_ALPHANUM) for _ in range(12))


def is_ended(info: egress.EgressInfo) -> bool:
    """Whether the status is final."""
    return info.status in ENDED


def copy_info(info: egress.EgressInfo) -> egress.EgressInfo:
    """A copy the caller may change."""
    copy = egress.EgressInfo()
    copy.CopyFrom(info)
    return copy


def request_webhooks(info: egress.EgressInfo) -> tuple[models.WebhookConfig, ...]:
    """The request's own webhooks, whichever request it was (``StartTrackEgress`` or ``StartEgress``)."""
    return tuple(info.egress.webhooks if info.HasField("egress") else info.track.webhooks)


def recorded_track_id(info: egress.EgressInfo) -> str:
    """The id of the track the egress records."""
    if not info.HasField("egress"):
        return info.track.track_id
    media = info.egress.media
    return media.video_track_id or next((route.track_id for route in media.audio.routes), "")
