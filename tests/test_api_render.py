"""GET /api/routes rendering from cached per-route fragments: byte for byte what rendering the
whole dict with orjson gives, whatever changed since the last GET, and valid JSON whatever the
routes hold (sans I/O, in-process)."""

from __future__ import annotations

import asyncio
import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cfproxy.api.render import (
    iso_ms,
    render_route_list,
    render_table_list,
    route_fragment,
)
from cfproxy.api.render import route_json as _route_json
from cfproxy.routing.table import RouteTable
from cfproxy.store.memory import MemoryStore

T = "http://127.0.0.1:9100"


def reference(table: RouteTable, since: int | None = None) -> bytes:
    """The list as the pre-cache code rendered it: one dict, one orjson.dumps."""
    out = {}
    for route in table:
        la = route.last_activity
        if since is None or math.floor(la * 1000) < since:
            out[route.prefix] = _route_json(route.data, la)
    return orjson.dumps(out)


def make_table(n: int = 5) -> RouteTable:
    table = RouteTable()
    for i in range(n):
        table.add(f"/user/{i}", {"target": T, "i": i, "f": 1.5}, 1_700_000_000.0 + i * 0.3337)
    return table


def test_list_matches_whole_dict_rendering():
    table = make_table()
    table.add("/odd\"key/é", {"target": T, "u": "zoë \u0001 / 日"}, 1_700_000_000.5)
    assert render_route_list(table, None) == reference(table)


def test_empty_table_renders_empty_object():
    assert render_route_list(RouteTable(), None) == b"{}"


def test_second_render_reuses_the_cached_fragment_object():
    table = make_table(1)
    route = table.get("/user/0")
    first = route_fragment(route, route.last_activity)
    assert route_fragment(route, route.last_activity) is first


def test_moved_last_activity_is_rendered_not_the_cached_one():
    table = make_table()
    render_route_list(table, None)
    route = table.get("/user/2")
    route.last_activity += 12345.678
    body = render_route_list(table, None)
    assert body == reference(table)
    assert iso_ms(route.last_activity).encode() in body


def test_data_changed_through_the_store_is_rendered_not_the_cached_one():
    table = make_table()
    store = MemoryStore(table)
    render_route_list(table, None)
    asyncio.run(store.update("/user/1", {"extra": [1, 2]}))
    body = render_route_list(table, None)
    assert b'"extra":[1,2]' in body
    assert body == reference(table)


def test_posted_last_activity_key_keeps_its_position_across_activity_changes():
    table = RouteTable()
    route = table.add("/a", {"last_activity": "x", "target": T}, 1_700_000_000.0)
    assert render_route_list(table, None) == reference(table)
    route.last_activity = 1_700_000_100.25
    assert render_route_list(table, None) == reference(table)
    assert render_route_list(table, None).startswith(b'{"/a":{"last_activity":"2023-')


def test_inactive_since_keeps_strictly_earlier_routes_at_millisecond_precision():
    table = RouteTable()
    table.add("/a", {"target": T}, 1000.0005)  # floor -> 1000000 ms
    table.add("/b", {"target": T}, 1000.0015)  # floor -> 1000001 ms
    table.add("/c", {"target": T}, 1001.0)  # exactly 1001000 ms: not earlier than itself
    for since in (999_999, 1_000_000, 1_000_001, 1_000_002, 1_001_000, 1_001_001):
        assert render_route_list(table, since) == reference(table, since)
    assert render_route_list(table, 1_000_001) == reference(table, 1_000_001) != b"{}"
    assert b'"/c"' not in render_route_list(table, 1_001_000)


timestamps = st.one_of(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.floats(min_value=-1e10, max_value=3e11, allow_nan=False),  # before 1970, after 9999
    st.integers(min_value=0, max_value=4_000_000_000).map(lambda s: s / 1000),
)


datas = st.sampled_from([
    {"target": T, "n": 2},
    {"last_activity": "posted first", "target": T},
    {"target": T, "last_activity": "posted last"},
    {"target": T, "s": ',"last_activity":"2020-01-01T00:00:00.000Z"}'},  # a look-alike tail
    {"target": T, "o": {"last_activity": "nested"}},
])


@settings(max_examples=400, deadline=None)
@given(data=datas, first=timestamps, then=timestamps,
       since=st.one_of(st.none(), st.integers(-10**13, 10**14)))
def test_fragments_stay_byte_identical_whatever_the_activity_does(data, first, then, since):
    table = RouteTable()
    route = table.add("/r", dict(data), first)
    table.add("/s", {"target": T}, 1_700_000_000.0)
    assert render_route_list(table, since) == reference(table, since)
    route.last_activity = then
    assert render_route_list(table, since) == reference(table, since)
    assert render_route_list(table, None) == reference(table, None)


# --- the whole-table body is reused only when nothing in it can differ ----------------------

def test_unchanged_table_reuses_the_previous_body():
    table = make_table()
    first = render_table_list(table)
    assert render_table_list(table) is first
    assert first == reference(table)


def test_whole_list_follows_adds_removes_and_activity():
    table = make_table()
    render_table_list(table)
    table.add("/new", {"target": T}, 1_700_000_001.0)
    assert render_table_list(table) == reference(table)
    table.remove("/user/0")
    assert render_table_list(table) == reference(table)
    table.get("/user/3").last_activity += 1.0
    assert render_table_list(table) == reference(table)


def test_whole_list_shows_data_changed_in_place_even_after_a_filtered_list_rendered_it():
    table = make_table()
    store = MemoryStore(table)
    render_table_list(table)
    asyncio.run(store.update("/user/1", {"extra": 1}))
    render_route_list(table, 10**15)  # re-renders /user/1's fragment, same last_activity
    body = render_table_list(table)
    assert b'"extra":1' in body and body == reference(table)


def test_whole_list_of_two_tables_never_mixes_them():
    a, b = make_table(2), make_table(3)
    b.add("/only-b", {"target": T}, 1.0)
    for _ in range(2):
        assert render_table_list(a) == reference(a)
        assert render_table_list(b) == reference(b)


# --- valid JSON for any data ------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8),
    st.sampled_from(["2020-01-01T00:00:00.000Z", "2020-01-01T00:00:00.000", "x" * 25]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
keys = st.one_of(st.sampled_from(["last_activity", "target", "x", "é", "\"}", ""]), st.text(max_size=6))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(datas=st.lists(st.dictionaries(keys, json_values, max_size=4), min_size=1, max_size=4),
       moves=st.lists(timestamps, min_size=1, max_size=3))
def test_the_list_is_valid_json_with_the_routes_data_whatever_it_holds(datas, moves):
    """Nested and repeated last_activity keys, unicode, quotes, big numbers: the body parses,
    and each route reads back as its data with last_activity set, after every activity move."""
    table = RouteTable()
    for i, data in enumerate(datas):
        table.add(f"/r/{i}/\"last_activity\"", {**data, "target": T}, 1_700_000_000.0 + i)
    for ts in moves:
        for route in table:
            route.last_activity = ts
            body = render_table_list(table)
            parsed = orjson.loads(body)
            assert list(parsed) == [r.prefix for r in table]
            for r in table:
                expected = orjson.loads(orjson.dumps({**r.data, "last_activity": iso_ms(r.last_activity)}))
                assert parsed[r.prefix] == expected


def test_a_nested_last_activity_at_the_end_never_breaks_the_list():
    """The old cache swapped the 24 bytes before the fragment's end when they followed
    `,"last_activity":"`, which a nested object can also end with: the list lost a brace."""
    table = RouteTable()
    data = {"last_activity": "posted", "target": T, "o": {"x": 1, "last_activity": "2020-01-01T00:00:00.000"}}
    route = table.add("/a", data, 1_700_000_000.0)
    render_table_list(table)
    route.last_activity = 1_800_000_000.0
    parsed = orjson.loads(render_table_list(table))
    assert parsed["/a"]["o"] == data["o"]
    assert parsed["/a"]["last_activity"] == iso_ms(1_800_000_000.0)
