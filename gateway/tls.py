"""TLS contexts: the listeners' (`proxy.tls`, `admin.tls`) and the https upstream's
(`proxy.upstream_ca`), and reloading the listeners' certificate files on SIGHUP.

A reload loads the files into the context the listening socket already uses: handshakes
from then on present the new certificate, connections already open keep theirs, nothing
is dropped. New files are first loaded into a scratch context, so a broken or half-written
file is reported and the certificate in use stays. CAs added to `client_ca` are trusted
after a reload; one removed from it stays trusted until the process restarts (OpenSSL
only adds to a context's trust store).
"""

from __future__ import annotations

import logging
import ssl

from .config import Config, TLSConfig
from .settings import ConfigError

log = logging.getLogger("gateway.tls")


def check(config: Config) -> None:
    """Load every TLS file `serve` will use, so a bad one stops start-up at once."""
    if config.proxy.enabled:
        if config.proxy.tls.enabled:
            server_context(config.proxy.tls, "proxy.tls")
        if config.proxy.upstream_ca:
            upstream_context(config.proxy.upstream_ca)
    if config.admin.enabled and config.admin.tls.enabled:
        server_context(config.admin.tls, "admin.tls")


def server_context(tls: TLSConfig, setting: str) -> ssl.SSLContext:
    """A listener's context; ConfigError names the setting whose file does not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls, setting)
    if tls.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def upstream_context(cafile: str) -> ssl.SSLContext:
    """Trust only `cafile` for the upstream; hostname verification stays on."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"proxy.upstream_ca: cannot load it: {_reason(exc)}") from None


def _load(context: ssl.SSLContext, tls: TLSConfig, setting: str) -> None:
    def no_passphrase() -> str:
        # Without a callback OpenSSL asks for it on the controlling terminal, if any:
        # start-up (or a SIGHUP reload, with the event loop) would wait there for ever.
        raise ConfigError(
            f"{setting}.key: the key is encrypted with a passphrase, which the gateway"
            " cannot ask for: give it the key unencrypted (readable by its user only)"
        )

    try:
        context.load_cert_chain(tls.certificate, tls.key, password=no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{setting}.certificate: cannot load it with {setting}.key: {_reason(exc)}"
        ) from None
    if tls.client_ca:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{setting}.client_ca: cannot load it: {_reason(exc)}") from None


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


class Reloader:
    """The listeners' contexts, reloaded from their files together."""

    def __init__(self) -> None:
        self._contexts: list[tuple[ssl.SSLContext, TLSConfig, str]] = []

    def server_context(self, tls: TLSConfig, setting: str) -> ssl.SSLContext | None:
        """The listener's context (None without TLS), remembered for `reload`."""
        if not tls.enabled:
            return None
        context = server_context(tls, setting)
        self._contexts.append((context, tls, setting))
        return context

    def reload(self) -> bool:
        """Load every listener's files again; False (and logged) when one does not load."""
        ok = True
        for context, tls, setting in self._contexts:
            try:
                server_context(tls, setting)  # scratch: a broken file leaves `context` as is
                _load(context, tls, setting)
            except ConfigError as exc:
                log.error("TLS files not reloaded, the previous ones stay in use: %s", exc)
                ok = False
            else:
                log.info("TLS files reloaded", extra={"setting": setting})
        return ok
