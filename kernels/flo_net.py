"""flo-backpack's kernel side, network part: which hosts and URLs the notebook reached.

Loaded by flo_kernel.attach, by path like it; stdlib only, CPython 3.8 to 3.13. Handles the
audit events socket.getaddrinfo (names the host a later connect reaches), socket.connect,
urllib.Request, and http.client.send (3.11+; http.client, urllib3 and requests all send
through it). Only the request line and the connection's host and port are logged, never
headers or bodies: those may carry credentials.
"""

import socket

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")


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
        write("connect", fields)

    def on_url(args):
        write("url", {"url": str(args[0])})

    def on_send(args):
        url = _request_url(args[0], args[1])
        if url:
            write("url", {"url": url, "via": "http.client"})

    return {"socket.getaddrinfo": on_lookup, "socket.connect": on_connect,
            "urllib.Request": on_url, "http.client.send": on_send}


def _request_url(conn, data):
    """The URL of an HTTP request from its request line and the connection; None if `data`
    is not the start of a request (a body sent separately, a CONNECT tunnel)."""
    if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]).startswith(_METHODS):
        return None
    parts = bytes(data[:data.find(b"\r\n")]).split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    target = parts[1].decode("ascii", "replace")
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
