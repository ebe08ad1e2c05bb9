"""The nesting cap on JSON the gateway handles (issue 13): a request body deeper than this is
refused (`gateway/views.py`), an answer or a streamed event that deep is treated as invalid
(`gateway/proxy.py`, `gateway/relay.py`).

Python's parser accepts ~1000 levels, but encoding such a value again for upstream, or walking it
to scrub the key, runs out of stack — a 500. Chat bodies, tool schemas included, nest far less.
"""

from __future__ import annotations

import itertools
import re

MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1


def nested_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests containers more than `limit` deep, without parsing it: the
    brackets outside strings, counted. Nearly free for ordinary bodies (too few brackets to
    matter); C-speed scans otherwise."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET)
    if re.search(rb"[\[{]{%d}" % (limit + 1), brackets):  # a plain run of openers
        return True
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit
