"""What a fetch may reach, enforced inside img2dataset's own downloads: http(s) only, after every redirect;
no loopback, private, link-local, multicast or reserved address (checked on the address each connection is
made to, so a name that resolves there, or a redirect to one, is refused the same way); a total deadline per
URL and a maximum body size. ``allow_private_addresses`` lifts the address rule (tests, local mirrors).

img2dataset fetches with ``urllib.request.urlopen`` in worker processes it spawns: ``SafeDownloader`` (its
``Downloader``, carrying the policy) installs this opener in each worker before its first download.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_BYTES = 20 * 2**20


@dataclass(frozen=True)
class FetchPolicy:
    """``allow_private_addresses``: True lifts the address rule; a tuple of addresses lifts it for those alone
    (a local mirror; the tests' server on 127.0.0.1)."""

    allow_private_addresses: bool | tuple = False
    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES


class Refused(urllib.error.URLError):
    """A URL the policy refuses; its text starts with the reason the fetch report records."""


def check_address(ip: str, policy: FetchPolicy) -> None:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    allow = policy.allow_private_addresses
    if allow is True or (isinstance(allow, (tuple, list)) and str(a) in allow):
        return
    if (a.is_private or a.is_loopback or a.is_link_local or a.is_multicast or a.is_reserved or a.is_unspecified
            or getattr(a, "is_site_local", False)):
        raise Refused(f"refused: private address {a} (loopback, private, link-local or multicast)")


def _connector(policy: FetchPolicy):
    """``socket.create_connection`` that connects only to addresses the policy allows (each checked first)."""
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sa in infos:
            check_address(sa[0], policy)
        err = None
        for family, kind, proto, _, sa in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sa)
                return sock
            except OSError as e:
                err = e
                sock.close()
        raise err or OSError(f"cannot connect to {host}")
    return create


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with http(s) alone (no ftp, file or data handler), each connection's address checked, and
    redirects to another scheme, bodies over the cap and downloads past the deadline refused."""
    connect = _connector(policy)

    class HTTPConnection(http.client.HTTPConnection):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._create_connection = connect

    class HTTPSConnection(http.client.HTTPSConnection):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._create_connection = connect

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(HTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(HTTPSConnection, req, context=self._context)

    class Redirects(urllib.request.HTTPRedirectHandler):
        def http_error_302(self, req, fp, code, msg, headers):
            where = headers.get("location") or headers.get("uri") or ""
            new = urllib.parse.urljoin(req.full_url, where)
            if not new.lower().startswith(("http://", "https://")):
                raise Refused(f"refused: redirect to another scheme ({new.split(':', 1)[0][:10]}:)")
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not newurl.lower().startswith(("http://", "https://")):
                raise Refused(f"refused: redirect to another scheme ({newurl.split(':', 1)[0][:10]}:)")
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None:
                new.memlab_t0 = getattr(req, "memlab_t0", time.monotonic())
            return new

    class Limits(urllib.request.BaseHandler):
        handler_order = 1000  # after the response processors

        def http_request(self, req):
            if not hasattr(req, "memlab_t0"):
                req.memlab_t0 = time.monotonic()
            return req

        https_request = http_request

        def http_response(self, req, resp):
            n = resp.headers.get("Content-Length")
            if n and n.isdigit() and int(n) > policy.max_bytes:
                raise Refused(f"refused: body too large ({int(n)} bytes; at most {policy.max_bytes})")
            resp.read = _capped_read(resp, req.memlab_t0 + policy.deadline_s, policy)
            return resp

        https_response = http_response

    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.UnknownHandler(), HTTPHandler(), HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
              Redirects(), urllib.request.HTTPErrorProcessor(), Limits()):
        opener.add_handler(h)
    return opener


def _capped_read(resp, deadline: float, policy: FetchPolicy):
    """``resp.read`` that stops at the body cap and the deadline (a slow drip is cut, not waited for)."""
    def read(amt=None):
        chunks, n = [], 0
        while amt is None or n < amt:
            if time.monotonic() > deadline:
                raise Refused(f"refused: deadline ({policy.deadline_s:g} s for the whole download) passed")
            b = resp.read1(65536 if amt is None else min(65536, amt - n))
            if not b:
                break
            n += len(b)
            if n > policy.max_bytes:
                raise Refused(f"refused: body too large (over {policy.max_bytes} bytes)")
            chunks.append(b)
        return b"".join(chunks)
    return read


def add_policy_arguments(p) -> None:
    """The command-line options of the policy (``index_builder download`` and ``memlab world create``)."""
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="fetch from loopback and private addresses too (a local mirror; refused by default)")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                   help=f"seconds per URL in all, redirects and body included (default {DEFAULT_DEADLINE_S:g})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"largest body fetched (default {DEFAULT_MAX_BYTES // 2**20} MiB)")


_installed: list = [None]


def install(policy: FetchPolicy) -> None:
    """Make ``urllib.request.urlopen`` in this process go through the policy's opener (once per policy)."""
    if _installed[0] != policy:
        urllib.request.install_opener(build_opener(policy))
        _installed[0] = policy


def safe_downloader_class():
    """img2dataset's ``Downloader`` that installs the policy (which it carries, pickled, to each worker) before
    it downloads."""
    from img2dataset.downloader import Downloader

    class SafeDownloader(Downloader):
        policy: dict = asdict(FetchPolicy())

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.memlab_policy = dict(type(self).policy)

        def __call__(self, row):
            p = dict(self.memlab_policy)
            if isinstance(p["allow_private_addresses"], list):
                p["allow_private_addresses"] = tuple(p["allow_private_addresses"])
            install(FetchPolicy(**p))
            return super().__call__(row)

    SafeDownloader.__module__ = __name__
    SafeDownloader.__qualname__ = "SafeDownloader"
    return SafeDownloader


def __getattr__(name: str):
    """``SafeDownloader`` made on first use (img2dataset is imported only by a fetch), by the same name in the
    workers img2dataset spawns, which unpickle it from here."""
    if name == "SafeDownloader":
        cls = safe_downloader_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
