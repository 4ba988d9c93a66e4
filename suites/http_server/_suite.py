"""The http-server suite object and the RFC sentences its checks enforce.

Every check module registers on :data:`SUITE`; the sentences below are quoted
in failure messages (``expected``) and in the suite README, so a student
reads the rule itself next to what their server did.
"""

from __future__ import annotations

from pytest_netlab.registry import Role, Suite, register_suite

from ._docroot import prepare_docroot

__all__ = ["SUITE"]

SUITE = register_suite(
    Suite(
        "http-server",
        Role.SERVER,
        title="HTTP/1.1 static file server (RFC 9110, RFC 9112)",
        placeholders=("host", "port", "docroot"),
        description=(
            "Serves the files of {docroot} (which the suite fills) over HTTP/1.1 on {host}:{port}: "
            "GET and HEAD, status codes by RFC 9110, framing and connections by RFC 9112."
        ),
        prepare=prepare_docroot,
    )
)

# -- the sentences (RFC 9110 = HTTP Semantics, RFC 9112 = HTTP/1.1) -----------------

CONTENT_LENGTH = (
    'RFC 9112 section 6.3: "If a valid Content-Length header field is present without Transfer-Encoding, '
    'its decimal value defines the expected message body length in octets."'
)
CONTENT_TYPE = (
    'RFC 9110 section 8.3: "A sender that generates a message containing content SHOULD generate a Content-Type '
    'header field in that message unless the intended media type of the enclosed representation is unknown to the sender."'
)
NOT_FOUND = (
    'RFC 9110 section 15.5.5: "The 404 (Not Found) status code indicates that the origin server did not find a '
    'current representation for the target resource or is not willing to disclose that one exists."'
)
DATE = (
    'RFC 9110 section 6.6.1: "An origin server with a clock (as defined in Section 5.6.7) MUST generate a Date '
    'header field in all 2xx (Successful), 3xx (Redirection), and 4xx (Client Error) responses"'
)
IMF_FIXDATE = (
    'RFC 9110 section 5.6.7: "When a sender generates a field that contains one or more timestamps defined as '
    'HTTP-date, the sender MUST generate those timestamps in the IMF-fixdate format."'
)
HEAD = 'RFC 9110 section 9.3.2: "The HEAD method is identical to GET except that the server MUST NOT send content in the response."'
HEAD_LENGTH = (
    'RFC 9110 section 8.6: "A server MAY send a Content-Length header field in a response to a HEAD request; a '
    "server MUST NOT send Content-Length in such a response unless its field value equals the decimal number of "
    'octets that would have been sent in the content of a response if the same request had used the GET method."'
)
GET_AND_HEAD = 'RFC 9110 section 9.1: "All general-purpose servers MUST support the methods GET and HEAD."'
ALLOW = (
    'RFC 9110 section 15.5.6: "The origin server MUST generate an Allow header field in a 405 response containing '
    "a list of the target resource's currently supported methods.\""
)
METHOD_CODES = (
    'RFC 9110 section 9.1: "An origin server that receives a request method that is unrecognized or not '
    "implemented SHOULD respond with the 501 (Not Implemented) status code. An origin server that receives a "
    "request method that is recognized and implemented, but not allowed for the target resource, SHOULD respond "
    'with the 405 (Method Not Allowed) status code."'
)
INVALID_REQUEST_LINE = (
    'RFC 9112 section 3: "Recipients of an invalid request-line SHOULD respond with either a 400 (Bad Request) '
    'error or a 301 (Moved Permanently) redirect with the request-target properly encoded."'
)
HOST = (
    'RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request '
    "message that lacks a Host header field and to any request message that contains more than one Host header "
    'field line or a Host header field with an invalid field value."'
)
SPACE_BEFORE_COLON = (
    'RFC 9112 section 5.1: "A server MUST reject, with a response status code of 400 (Bad Request), any received '
    'request message that contains whitespace between a header field name and colon."'
)
BAD_CONTENT_LENGTH = (
    'RFC 9112 section 6.3: "If a message is received without Transfer-Encoding and with an invalid Content-Length '
    "header field, then the message framing is invalid and the recipient MUST treat it as an unrecoverable error "
    "[...] If the unrecoverable error is in a request message, the server MUST respond with a 400 (Bad Request) "
    'status code and then close the connection."'
)
HTTP10_CLOSE = (
    'RFC 9112 section 9.3: "If the received protocol is HTTP/1.0, the "keep-alive" connection option is present, '
    "[...] the connection will persist after the current response; otherwise, the connection will close after the "
    'current response."'
)
TE_HTTP10 = (
    'RFC 9112 section 6.1: "A server MUST NOT send a response containing Transfer-Encoding unless the '
    'corresponding request indicates HTTP/1.1 (or later minor revisions)."'
)
LINE_LENGTH = (
    'RFC 9112 section 3: "A server that receives a request-target longer than any URI it wishes to parse MUST '
    'respond with a 414 (URI Too Long) status code"; RFC 6585 section 5 (431 Request Header Fields Too Large)'
)
PERSISTENT = (
    'RFC 9112 section 9.3: "HTTP/1.1 defaults to the use of "persistent connections", allowing multiple requests '
    'and responses to be carried over a single connection."'
)
MUST_SAY_CLOSE = (
    'RFC 9112 section 9.6: "A server that does not support persistent connections MUST send the "close" '
    'connection option in every response message that does not have a 1xx (Informational) status code."'
)
PIPELINING = (
    'RFC 9112 section 9.3.2: "A server MAY process a sequence of pipelined requests in parallel if they all have '
    'safe methods, but it MUST send the corresponding responses in the same order that the requests were received."'
)
CLOSE_OPTION = (
    'RFC 9112 section 9.6: "A server that receives a "close" connection option MUST initiate closure of the '
    'connection after it sends the final response to the request that contained the "close" connection option. '
    '[...] The server MUST NOT process any further requests received on that connection."'
)
IF_MODIFIED_SINCE = (
    'RFC 9110 section 13.1.3: "The origin server SHOULD NOT perform the requested method if the selected '
    "representation's last modification date is earlier than or equal to the date provided in the field value; "
    'instead, the origin server SHOULD generate a 304 (Not Modified) response"'
)
IF_NONE_MATCH = (
    'RFC 9110 section 13.1.2: "If the field value is a list of entity tags, the condition is false if one of the '
    'listed tags matches the entity tag of the selected representation." (a false condition on GET: 304)'
)
NOT_MODIFIED = 'RFC 9110 section 15.4.5: "A 304 response is terminated by the end of the header section; it cannot contain content or trailers."'
CONDITION_TRUE = (
    "RFC 9110 section 13.2.2: a request whose preconditions evaluate to true is performed as if it were "
    "unconditional (a GET gets 200 and the content)"
)
TRAVERSAL = (
    'RFC 9110 section 17.3: "an origin server needs to avoid accessing names that have a special significance to '
    'the system when mapping the target resource to files, folders, or directories."'
)
