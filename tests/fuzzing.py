"""Hypothesis strategies for hostile input: any MessagePack value, request-shaped maps.

The run size comes from the hypothesis profile: ``ci`` (the default, quick) or
``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, long runs by hand).
"""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

from engramd.protocol.messages import AnyClientMessage

REQUEST_TYPES = {cls.__struct_config__.tag: cls for cls in AnyClientMessage.__args__}

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(
    leaves,
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.text(max_size=10), children, max_size=6)),
    max_leaves=40,
)


@st.composite
def request_maps(draw: st.DrawFn, exclude: frozenset[str] = frozenset()) -> dict[str, object]:
    """A map with a real ``msg`` tag and a random mix of that request's real fields."""
    tag = draw(st.sampled_from(sorted(set(REQUEST_TYPES) - exclude)))
    fields = [field.encode_name for field in msgspec.structs.fields(REQUEST_TYPES[tag])]
    chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
    body: dict[str, object] = {"msg": tag}
    for name in chosen:
        body[name] = draw(values)
    if draw(st.booleans()):
        body["id"] = draw(st.integers(0, 2**31))
    return body


def encode(value: object) -> bytes:
    return msgspec.msgpack.encode(value)
