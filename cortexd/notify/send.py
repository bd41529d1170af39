"""Blocking delivery of one request (HTTP POST or SMTP), run in a worker thread.

Each call carries its own socket timeout; the caller also bounds the thread
with a deadline, so a hanging endpoint costs one worker slot, never the loop.
"""

from __future__ import annotations

import http
import ipaddress
import smtplib
import ssl as ssl_module
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from cortexd.notify.model import MAX_BODY, Answer, DeliveryFailed
from cortexd.notify.payloads import HttpRequest, MailRequest, Request

__all__ = ["Answer", "DeliveryFailed", "deliver"]

USER_AGENT = "cortexd-notify/1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be re-sent as a GET without its body.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def deliver(request: Request, timeout: float) -> Answer:
    """Send `request`; returns the endpoint's answer. Raises DeliveryFailed."""
    if isinstance(request, MailRequest):
        return _mail(request, timeout)
    return _post(request, timeout)


def _post(request: HttpRequest, timeout: float) -> Answer:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if _is_loopback(request.url):
        # Proxy variables from the environment never apply to a local receiver.
        handlers.append(urllib.request.ProxyHandler({}))
    if request.ca_file:
        try:
            handlers.append(urllib.request.HTTPSHandler(context=_tls(request.ca_file)))
        except OSError as exc:
            raise DeliveryFailed(f"cannot use ca_file {request.ca_file}: {exc}") from None
    opener = urllib.request.build_opener(*handlers)
    post = urllib.request.Request(
        request.url,
        data=request.body,
        headers={"User-Agent": USER_AGENT, **request.headers},
        method="POST",
    )
    try:
        with opener.open(post, timeout=timeout) as response:
            text = response.read(MAX_BODY).decode("utf-8", "replace")
            return Answer(int(response.status), text)
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_BODY).decode("utf-8", "replace") if exc.fp else ""
        exc.close()
        # The server's words go to `body` (admins see them), never into the message.
        raise DeliveryFailed(f"HTTP {exc.code} {_phrase(exc.code)}".strip(), body=text) from None
    except urllib.error.URLError as exc:
        raise DeliveryFailed(f"cannot reach {_where(request.url)}: {exc.reason}") from None
    except TimeoutError:
        raise DeliveryFailed(f"no answer from {_where(request.url)} in {timeout:g}s") from None
    except OSError as exc:
        raise DeliveryFailed(f"{_where(request.url)}: {exc}") from None


def _phrase(code: int) -> str:
    # The standard phrase, not the server's own (its words are the body's).
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def _tls(ca_file: str | None) -> ssl_module.SSLContext:
    """Certificates are always verified; `ca_file` adds the CA an internal server uses."""
    return ssl_module.create_default_context(cafile=ca_file)


def _where(url: str) -> str:
    # Never the path: Slack and Discord URLs carry their token there.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _mail(request: MailRequest, timeout: float) -> Answer:
    try:
        client: smtplib.SMTP
        if request.ssl:
            client = smtplib.SMTP_SSL(
                request.host,
                request.port,
                timeout=timeout,
                context=_tls(request.ca_file),
            )
        else:
            client = smtplib.SMTP(request.host, request.port, timeout=timeout)
        with client:
            client.ehlo()
            if request.starttls:
                client.starttls(context=_tls(request.ca_file))
                client.ehlo()
            if request.username:
                client.login(request.username, request.password or "")
            refused = client.send_message(request.message)
            if refused:
                raise DeliveryFailed(f"recipients refused: {', '.join(sorted(refused))}")
            code, text = client.noop()
            return Answer(int(code), text.decode("utf-8", "replace")[:MAX_BODY])
    except ssl_module.SSLError as exc:
        raise DeliveryFailed(f"TLS with {request.host}:{request.port} failed: {exc}") from None
    except smtplib.SMTPResponseException as exc:
        said = (
            exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
        )
        raise DeliveryFailed(
            f"SMTP {request.host}:{request.port}: reply {exc.smtp_code}", body=said
        ) from None
    except smtplib.SMTPException as exc:
        raise DeliveryFailed(f"SMTP {request.host}:{request.port}: {exc}") from None
    except TimeoutError:
        raise DeliveryFailed(
            f"no answer from SMTP {request.host}:{request.port} in {timeout:g}s"
        ) from None
    except OSError as exc:
        raise DeliveryFailed(f"cannot reach SMTP {request.host}:{request.port}: {exc}") from None
