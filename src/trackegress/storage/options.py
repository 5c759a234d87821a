"""What every storage backend's settings share: the settings base class, proxies, retries and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from livekit.protocol import egress

from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, ConfigError

RETRY_KEYS = frozenset({"max_retries", "min_retry_delay", "max_retry_delay"})
# a proxy's secrets in a request (dotted path → placeholder); "": the URL's userinfo password only
PROXY_SECRETS = {"proxy.password": "{proxy_password}", "proxy.url": ""}


@dataclass(frozen=True)
class BackendSettings:
    """One backend's settings (``S3``, ``GCP``, ``Azure``: each backend module's own); its row in
    ``backends.BACKENDS`` says how they are parsed and opened."""


@dataclass(frozen=True)
class Proxy:
    """An HTTP(S) proxy for uploads."""

    url: str
    username: str = ""
    password: str = ""

    def url_with_auth(self) -> str:
        """``url`` with the basic-auth user and password percent-encoded in its authority, the form both obstore
        (reqwest) and aiohttp take them in; ``url`` as is without a username."""
        if not self.username:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{rest}"

    @property
    def secrets(self) -> tuple[str, str]:
        """The password as given and percent-encoded (as it stands in ``url_with_auth``), for redaction."""
        return self.password, quote(self.password, safe="")


@dataclass(frozen=True)
class Retry:
    """Upload retries: upstream's ``max_retries`` / ``min_retry_delay`` / ``max_retry_delay`` (seconds)."""

    max_retries: int = 5
    min_delay: float = 0.1
    max_delay: float = 5.0


def check_proxy(name: str, proxy: Proxy | None) -> None:
    if proxy is not None:
        check_url(f"{name}.url", proxy.url)


def check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(INVALID_ARGUMENT, f"{name} must be an http(s) URL, got {url!r}")


def proxy_from_request(proxy: egress.ProxyConfig) -> Proxy:
    return Proxy(proxy.url, proxy.username, proxy.password)


def proxy_from_config(raw: Section) -> Proxy | None:
    """A backend block's ``proxy_config``."""
    section = raw.section("proxy_config")
    if not section:
        return None
    section.refuse_unknown(frozenset({"url", "username", "password"}))
    return Proxy(section.text("url"), section.text("username"), section.text("password"))
