"""TLS contexts for the listener and the sender: DICOM secure transport (PS3.15 Annex B.9).

Both follow the BCP 195 profiles (PS3.15 B.9 / B.10, RFC 9325) as far as Python's `ssl` allows:

- TLS 1.2 is the minimum; SSLv2/3, TLS 1.0 and 1.1 are off;
- TLS 1.2 cipher suites are forward-secret AEAD only (ECDHE/DHE with AES-GCM or ChaCha20);
  TLS 1.3 suites are OpenSSL's, all AEAD;
- no TLS compression (CRIME), no client-initiated renegotiation, the server's suite order wins;
- a client always verifies the server's certificate (against the configured CA file or the
  system trust store) and by default its host name.

Secrets (private key passwords) are read from a file or an environment variable when a context
is built and handed to OpenSSL through a callback; they are never logged nor kept.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from sidecar.settings import DestinationTls, ListenerTls

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


__all__ = ["BCP195_CIPHERS", "LazyHandshakeContext", "client_context", "server_context"]
