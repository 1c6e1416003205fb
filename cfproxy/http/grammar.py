"""The HTTP/1.1 grammar (RFC 9110 / RFC 9112) as regex source, one named rule per item.

Shared by the general parser (parser.py) and its fast twins (fastpath.py), so both
accept exactly the same language; written as h11/_abnf.py writes it, with the RFC
text above each rule so it can be checked against the RFC.
"""

from __future__ import annotations

# Grammar (RFC 9110 / RFC 9112), one named rule per item, as in h11/_abnf.py.
# Patterns are bytes; character classes are written out so each can be checked
# against the RFC text quoted above it.
# ---------------------------------------------------------------------------

# RFC 9110 5.6.2
#   token          = 1*tchar
#   tchar          = "!" / "#" / "$" / "%" / "&" / "'" / "*"
#                  / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#                  / DIGIT / ALPHA
#                  ; any VCHAR, except delimiters
TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
TOKEN = TCHAR + rb"+"

# RFC 9110 5.6.3
#   OWS            = *( SP / HTAB )
OWS = rb"[ \t]*"

# RFC 9110 5.5
#   field-value    = *field-content
#   field-content  = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar    = VCHAR / obs-text
#   obs-text       = %x80-FF
# RFC 5234 B.1:  VCHAR = %x21-7E
# Leading/trailing OWS is allowed around the value by the field-line rule, so
# one class for the whole value-with-OWS is: HTAB / SP / VCHAR / obs-text.
# Everything else (NUL, CR, LF, the other CTLs, DEL) is invalid.
FIELD_VALUE_CHAR = rb"[\t\x20-\x7e\x80-\xff]"
# Responses: lenient like real clients, only NUL, CR and LF are fatal
# (RFC 9110 5.5: "a recipient of CR, LF, or NUL within a field value MUST
# either reject the message or replace each of those characters with SP").
LENIENT_FIELD_VALUE_CHAR = rb"[^\x00\r\n]"

# RFC 9112 5
#   field-line     = field-name ":" OWS field-value OWS
#   field-name     = token            (RFC 9110 5.1)
# RFC 9112 5.1: "No whitespace is allowed between the field name and colon ...
#   A server MUST reject, with a response status code of 400 (Bad Request),
#   any received request message that contains whitespace between a header
#   field name and colon."
# RFC 9112 5.2: obs-fold (a line starting with SP / HTAB) - a server MUST
#   either reject or replace with SP; we reject (the line does not start with
#   a tchar, so it fails FIELD_LINE).
FIELD_LINE = TOKEN + rb":" + FIELD_VALUE_CHAR + rb"*"
LENIENT_FIELD_LINE = TOKEN + rb":" + LENIENT_FIELD_VALUE_CHAR + rb"*"

# RFC 9112 2.1
#   HTTP-message   = start-line CRLF *( field-line CRLF ) CRLF [ message-body ]
# RFC 9112 2.2: "a recipient MUST NOT ... accept a bare CR"; bare LF "MAY" be
#   accepted - we do not: every line ends in CRLF.
FIELD_LINES = rb"(?:" + FIELD_LINE + rb"\r\n)*"
LENIENT_FIELD_LINES = rb"(?:" + LENIENT_FIELD_LINE + rb"\r\n)*"

# RFC 9112 3
#   request-line   = method SP request-target SP HTTP-version
#   method         = token
# RFC 9112 3.2
#   request-target = origin-form / absolute-form / authority-form / asterisk-form
#   origin-form    = absolute-path [ "?" query ]
#   absolute-form  = absolute-URI
#   asterisk-form  = "*"
# (authority-form is CONNECT only, and CONNECT gets 501 before this matters.)
# Every form is made of visible characters (as h11: raw space, CTLs and
# non-ASCII are refused), and like Node's parser (so CHP) we take only a
# target that starts with "/", is "*", or starts with "scheme://": "foo",
# "a:b", "http:/x", "\\a" and "?q" get 400 as they do from CHP.
# RFC 9112 2.3
#   HTTP-version   = HTTP-name "/" DIGIT "." DIGIT
#   HTTP-name      = %s"HTTP"
VCHAR = rb"[\x21-\x7e]"
REQUEST_TARGET = rb"(?:/" + VCHAR + rb"*|\*|[A-Za-z][A-Za-z0-9+.\-]*://" + VCHAR + rb"*)"
HTTP_VERSION = rb"HTTP/([0-9])\.([0-9])"
REQUEST_LINE = rb"(" + TOKEN + rb") (" + REQUEST_TARGET + rb") " + HTTP_VERSION
# What an HTTP/0.9 "simple request" looks like: method SP target, no version.
SIMPLE_REQUEST_LINE = TOKEN + rb" " + REQUEST_TARGET

# RFC 9112 4
#   status-line    = HTTP-version SP status-code SP [ reason-phrase ]
#   status-code    = 3DIGIT
#   reason-phrase  = 1*( HTAB / SP / VCHAR / obs-text )
# Lenient as h11: the SP before an empty reason phrase may be missing.
STATUS_LINE = HTTP_VERSION + rb" ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"

# RFC 9110 8.6
#   Content-Length = 1*DIGIT
# capped at 18 digits so the value always fits comfortably in an int64.
CONTENT_LENGTH = rb"[0-9]{1,18}"

# RFC 9112 3.2 / RFC 3986 3.2.2
#   Host = uri-host [ ":" port ]
#   uri-host = IP-literal / IPv4address / reg-name
#   reg-name = *( unreserved / pct-encoded / sub-delims )
#   IP-literal = "[" ( IPv6address / IPvFuture ) "]"
#   port = *DIGIT
HOST = (
    rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]+\]|[0-9A-Za-z.\-_~!$&'()*+,;=%]*)"
    rb"(?::[0-9]*)?"
)

# RFC 9112 7.1
#   chunked-body   = *chunk last-chunk trailer-section CRLF
#   chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size     = 1*HEXDIG
#   last-chunk     = 1*("0") [ chunk-ext ] CRLF
# RFC 9112 7.1.1
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# We cap chunk-size at 16 hex digits (2**64 - 1), refuse signs, "0x", leading
# whitespace and whitespace not followed by ";", and accept any
# non-control text as extensions (they are forwarded untouched, not interpreted).
CHUNK_HEADER = rb"([0-9A-Fa-f]{1,16})(?:" + OWS + rb";" + FIELD_VALUE_CHAR + rb"*)?\r\n"
# RFC 9112 7.1.2
#   trailer-section = *( field-line CRLF )
TRAILER_LINE = FIELD_LINE + rb"\r\n"
