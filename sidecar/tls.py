"""TLS contexts for the listener and the sender: DICOM secure transport (PS3.15 Annex B.9).

Both follow the BCP 195 profiles (PS3.15 B.9 / B.10, RFC 9325) as far as Python's `ssl` allows:

- TLS 1.2 is the minimum; SSLv2/3, TLS 1.0 and 1.1 are off;
- TLS 1.2 cipher suites are forward-secret AEAD only (ECDHE/DHE with AES-GCM or ChaCha20);
  TLS 1.3 suites are OpenSSL's, all AEAD;
- no TLS compression (CRIME), no client-initiated renegotiation, the server's suite order wins;
- a client always verifies the server's certificate (against the configured CA file or the
  system trust store) and by default its host name.

The settings models for both sides live here too (settings.py re-exports them), so this module
needs nothing of the service. Secrets (private key passwords) are read from a file or an environment variable when a context
is built and handed to OpenSSL through a callback; they are never logged nor kept.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _KeyPassword(_Strict):
    """Where the password of an encrypted private key comes from: a file or an environment
    variable (never the repository). Unencrypted keys need neither."""

    key_password_file: Path | None = None
    key_password_env: str | None = None

    def key_password(self, env: dict[str, str] | None = None) -> SecretStr | None:
        """The password, read now; None when none is configured."""
        if self.key_password_file is not None:
            return SecretStr(self.key_password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        if self.key_password_env is not None:
            value = (os.environ if env is None else env).get(self.key_password_env)
            if value is None:
                raise ValueError(f"environment variable {self.key_password_env} is not set")
            return SecretStr(value)
        return None


class ListenerTls(_KeyPassword):
    """DICOM TLS on the listener (PS3.15 B.9 secure transport; BCP 195 as far as Python's ssl
    allows: TLS 1.2 or newer, AEAD ECDHE/DHE suites only, no compression, no renegotiation)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # CA bundle that client certificates must chain to
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_certs_need_a_ca(self) -> ListenerTls:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs client certificates)")
        return self


class DestinationTls(_KeyPassword):
    """DICOM TLS to one destination. The server certificate is always verified, against
    `ca_file` or the system's trust store; `cert_file`/`key_file` present a client certificate
    (mutual TLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True
    server_name: str | None = None  # the name to check and to send as SNI; default the host

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> DestinationTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        return self


#: TLS 1.2 suites (OpenSSL names): forward-secret AEAD only, ECDHE first.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
])


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Any, key: Any, conf: ListenerTls | DestinationTls) -> None:
    password = conf.key_password()
    ctx.load_cert_chain(
        str(cert), str(key),
        password=(lambda: password.get_secret_value()) if password is not None else None,
    )


def server_context(conf: ListenerTls) -> ssl.SSLContext:
    """The listener's context; client certificates required, optional or ignored as configured."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(ctx, conf.cert_file, conf.key_file, conf)
    if conf.ca_file is not None:
        ctx.load_verify_locations(cafile=str(conf.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if conf.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(conf: DestinationTls) -> ssl.SSLContext:
    """The sender's context for one destination; the server certificate is always verified."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = conf.verify_hostname
    if conf.ca_file is not None:
        ctx.load_verify_locations(cafile=str(conf.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if conf.cert_file is not None and conf.key_file is not None:
        _load_chain(ctx, conf.cert_file, conf.key_file, conf)
    return ctx


class LazyHandshakeContext:
    """Wraps accepted sockets without doing the handshake in pynetdicom's accept loop.

    pynetdicom's server wraps each accepted socket with `wrap_socket(sock, server_side=True)`
    on the thread that accepts connections, where a blocking handshake would let one silent or
    slow client stall every other caller. With `do_handshake_on_connect=False` the handshake
    runs on the association's own thread at its first read (bounded by the ACSE timeout), and
    a plaintext or failing client only ends its own association.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True, **kwargs: Any) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, **kwargs)


__all__ = ["BCP195_CIPHERS", "DestinationTls", "LazyHandshakeContext", "ListenerTls", "client_context", "server_context"]
