"""flo-backpack's kernel side, network part: which hosts and URLs the notebook reached.

Loaded by flo_kernel.attach, by path like it; stdlib only, CPython 3.8 to 3.13. Handles the
audit events socket.getaddrinfo (names the host a later connect reaches), socket.connect,
urllib.Request, and http.client.send (3.11+; http.client, urllib3 and requests all send
through it), and wraps http.client's putrequest/getresponse to log each response's status
(no audit event tells it), so the drafter lists only URLs that were read.

Only the request line and the connection's host and port are logged, never headers or bodies:
those may carry credentials. URLs may carry them too (signed URLs, `?token=`): their values
are replaced by REDACTED before anything is logged, so the record never holds them.
"""

import socket
import weakref
from urllib.parse import unquote, urljoin

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")

# Keep in sync with auditor/emit/data/rules.py (REDACTED).
REDACTED = "FLO-REDACTED"
# Query parameters whose value is a credential (names lower-cased, "-" read as "_").
_CREDENTIAL_PARAMS = frozenset((
    "x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature",
    "x_goog_credential", "sig", "signature", "awsaccesskeyid", "googleaccessid", "token",
    "access_token", "id_token", "refresh_token", "api_key", "apikey", "x_api_key", "password",
    "passwd", "secret", "client_secret"))
_CREDENTIAL_SUFFIXES = ("_token", "_secret", "_password", "_signature")


def network_handlers(write):
    """Audit event name -> handler; `write(ev, fields)` appends one hooks.jsonl record."""
    names = {}  # port -> the host name last looked up for it (a connect to that port follows)

    def on_lookup(args):
        host, port = _text(args[0]), args[1]
        if host and not _is_ip(host):
            names[str(port)] = host

    def on_connect(args):
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) not in _INET_FAMILIES or not isinstance(address, tuple):
            return
        host, port = _text(address[0]), address[1]
        fields = {"address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
        name = names.get(str(port))
        if name:
            fields["host"] = name
        if getattr(sock, "type", 0) & socket.SOCK_DGRAM:
            fields["udp"] = True  # sets the peer only; sends nothing (a local-IP probe)
        write("connect", fields)

    def on_url(args):
        write("url", {"url": redact_url(str(args[0]))})

    def on_send(args):
        url = _request_url(args[0], args[1])
        if url:
            write("url", {"url": redact_url(url), "via": "http.client"})

    return {"socket.getaddrinfo": on_lookup, "socket.connect": on_connect,
            "urllib.Request": on_url, "http.client.send": on_send}


def watch_responses(write):
    """Log a `response` record (url, status, redirect location) for every HTTP response
    http.client reads, by wrapping HTTPConnection.putrequest and getresponse (subclasses such
    as HTTPSConnection and urllib3's call them). Returns True once installed."""
    import http.client

    cls = http.client.HTTPConnection
    if getattr(cls, "_flo_backpack_watched", False):
        return True
    requested = weakref.WeakKeyDictionary()  # connection -> URL of the request in flight
    put, get = cls.putrequest, cls.getresponse

    def putrequest(self, method, url, *args, **kwargs):
        try:
            requested[self] = _full_url(self, str(url))
        except Exception:
            pass
        return put(self, method, url, *args, **kwargs)

    def getresponse(self, *args, **kwargs):
        response = get(self, *args, **kwargs)
        try:
            url = requested.pop(self, None)
            if url:
                fields = {"url": redact_url(url), "status": int(response.status)}
                location = response.getheader("Location") if 300 <= response.status < 400 else None
                if location:
                    fields["location"] = redact_url(urljoin(url, location))
                write("response", fields)
        except Exception:
            pass
        return response

    putrequest.__wrapped__, getresponse.__wrapped__ = put, get
    cls.putrequest, cls.getresponse = putrequest, getresponse
    cls._flo_backpack_watched = True
    return True


def redact_url(url):
    """`url` with the value of each credential query (or fragment) parameter, and a password
    before the host, replaced by REDACTED; everything else kept byte for byte."""
    base, hash_mark, fragment = url.partition("#")
    base, question, query = base.partition("?")
    start = base.find("://") + 3
    if start > 2:
        end = base.find("/", start)
        end = len(base) if end < 0 else end
        userinfo, at, host = base[start:end].rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            base = f"{base[:start]}{user}:{REDACTED}@{host}{base[end:]}"
    return base + question + _redact_params(query) + hash_mark + _redact_params(fragment)


def _redact_params(text):
    if "=" not in text:
        return text
    items = []
    for item in text.split("&"):
        name, equals, value = item.partition("=")
        if equals and value and _is_credential(name, value):
            item = f"{name}={REDACTED}"
        items.append(item)
    return "&".join(items)


def _is_credential(name, value):
    key = unquote(name).strip().lower().replace("-", "_")
    if key in _CREDENTIAL_PARAMS or key.endswith(_CREDENTIAL_SUFFIXES):
        return True
    if key in ("key", "auth", "code"):
        # `key=` also names objects (`?key=data/x.csv`): only a long opaque value is a secret.
        return (len(value) >= 20 and value.replace("-", "").replace("_", "").isalnum()
                and any(c.isdigit() for c in value) and any(c.isalpha() for c in value))
    return False


def _request_url(conn, data):
    """The URL of an HTTP request from its request line and the connection; None if `data`
    is not the start of a request (a body sent separately, a CONNECT tunnel)."""
    if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]).startswith(_METHODS):
        return None
    parts = bytes(data[:data.find(b"\r\n")]).split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    return _full_url(conn, parts[1].decode("ascii", "replace"))


def _full_url(conn, target):
    """The whole URL of request target `target` (origin or absolute form) sent on `conn`."""
    if "://" in target:
        return target  # absolute form: a request through a proxy names the whole URL
    if not target.startswith("/"):
        return None
    host = getattr(conn, "_tunnel_host", None) or getattr(conn, "host", None)
    port = getattr(conn, "_tunnel_port", None) or getattr(conn, "port", None)
    if not isinstance(host, str) or not host:
        return None
    secure = getattr(conn, "default_port", 80) == 443 or getattr(conn, "_tunnel_host", None)
    scheme, default = ("https", 443) if secure else ("http", 80)
    netloc = f"[{host}]" if ":" in host else host
    if port not in (None, default):
        netloc += f":{port}"
    return f"{scheme}://{netloc}{target}"


def _text(value):
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def _is_ip(host):
    for family in _INET_FAMILIES:
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False
