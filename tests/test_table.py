"""RouteTable, sans I/O: keys, ordering, targets parsed once, host routing (Q4, Q10)."""

from __future__ import annotations

import time

import pytest

from cfproxy.routing.table import Route, RouteTable, canonical_prefix
from cfproxy.routing.target import InvalidTarget

T1 = "http://127.0.0.1:9001"
T2 = "http://127.0.0.1:9002"


def test_add_parses_the_target_once_and_sets_last_activity_now():
    table = RouteTable()
    before = time.time()
    route = table.add("/user/a", {"target": T1 + "/base?x=1", "extra": True})
    assert isinstance(route, Route)
    assert route.prefix == "/user/a"
    assert route.data == {"target": T1 + "/base?x=1", "extra": True}
    assert route.target.host == "127.0.0.1" and route.target.port == 9001
    assert route.target.path == "/base" and route.target.query == "x=1"
    assert before <= route.last_activity <= time.time()


def test_add_accepts_an_explicit_last_activity():
    route = RouteTable().add("/a", {"target": T1}, last_activity=123.5)
    assert route.last_activity == 123.5


@pytest.mark.parametrize("target", [None, 5, "", "not a url", "ftp://h/x", "http://", "http://h:99999"])
def test_unparseable_targets_are_refused_and_nothing_is_stored(target):
    table = RouteTable()
    table.add("/keep", {"target": T1})
    with pytest.raises(InvalidTarget):
        table.add("/keep", {"target": target})
    with pytest.raises(InvalidTarget):
        table.add("/new", {"target": target})
    assert [r.prefix for r in table] == ["/keep"]
    assert table.get("/keep").data["target"] == T1


def test_get_is_exact_and_longest_match_is_segment_wise():
    table = RouteTable()
    table.add("/", {"target": T1})
    table.add("/user/a", {"target": T2})
    assert table.get("/user") is None
    assert table.get("/user/a").data["target"] == T2
    assert table.longest_match("/user/a/lab").prefix == "/user/a"
    assert table.longest_match("/user/ab").prefix == "/"
    assert table.longest_match("/user").prefix == "/"


def test_remove_reports_whether_a_route_was_there():
    table = RouteTable()
    table.add("/a", {"target": T1})
    table.add("/a/b", {"target": T2})
    assert table.remove("/a") is True
    assert table.remove("/a") is False
    assert table.longest_match("/a/b/c").prefix == "/a/b"
    assert table.longest_match("/a/x") is None
    assert len(table) == 1


def test_iteration_is_insertion_order_replace_keeps_position_delete_and_add_moves_to_end():
    table = RouteTable()
    for p in ["/a", "/b", "/c"]:
        table.add(p, {"target": T1})
    table.add("/a", {"target": T2})
    assert [r.prefix for r in table] == ["/a", "/b", "/c"]
    assert table.get("/a").data["target"] == T2
    table.remove("/b")
    table.add("/b", {"target": T1})
    assert [r.prefix for r in table] == ["/a", "/c", "/b"]
    assert len(table) == 3


def test_replacing_a_route_leaves_the_old_route_object_untouched():
    table = RouteTable()
    old = table.add("/a", {"target": T1})
    new = table.add("/a", {"target": T2})
    assert old is not new
    assert old.target.port == 9001 and new.target.port == 9002
    assert table.longest_match("/a/x") is new


def test_iteration_is_safe_while_the_table_changes():
    table = RouteTable()
    for i in range(5):
        table.add(f"/r{i}", {"target": T1})
    for route in table:
        table.remove(route.prefix)
    assert len(table) == 0


@pytest.mark.parametrize("raw, key", [
    ("/", "/"), ("", "/"), ("//", "/"), ("/a/", "/a"), ("a", "/a"),
    ("//double", "/double"), ("/x//y/", "/x//y"), ("/a//", "/a"),
])
def test_keys_are_canonical_so_dict_and_trie_agree(raw, key):
    assert canonical_prefix(raw) == key
    table = RouteTable()
    table.add(raw, {"target": T1})
    assert [r.prefix for r in table] == [key]
    assert table.get(key) is not None
    assert table.longest_match(key + "/deeper").prefix == key


def test_double_leading_slash_route_is_found_by_get_and_by_routing():
    # quirk Q4: CHP stores "//double" but routes it as "/double"
    table = RouteTable()
    table.add("//double", {"target": T1})
    assert table.get("/double") is table.longest_match("/double/x")


def test_clear_empties_dict_and_trie():
    table = RouteTable()
    table.add("/", {"target": T1})
    table.add("/a", {"target": T1})
    table.clear()
    assert len(table) == 0 and table.longest_match("/a") is None


# --- host routing (reference 3.3, Q10) -----------------------------------------------------

def test_host_routing_matches_the_host_case_insensitively_and_keeps_the_posted_key():
    table = RouteTable(host_routing=True)
    table.add("/", {"target": T1})
    route = table.add("/Example.COM/app", {"target": T2, "host": "Example.COM"})
    assert route.prefix == "/Example.COM/app"
    # the caller lower-cases the request's host
    assert table.longest_match("/example.com/app/x") is route
    assert table.longest_match("/example.com/other").prefix == "/"
    assert table.get("/example.com/app") is route
    assert table.get("/EXAMPLE.com/app") is route
    # only the host segment folds
    assert table.longest_match("/example.com/APP").prefix == "/"


def test_host_routing_differently_cased_posts_are_one_route():
    table = RouteTable(host_routing=True)
    table.add("/Host.example", {"target": T1})
    table.add("/host.example", {"target": T2})
    assert len(table) == 1
    assert table.longest_match("/host.example/x").target.port == 9002
    assert table.remove("/HOST.EXAMPLE") is True
    assert table.longest_match("/host.example/x") is None


def test_without_host_routing_case_matters():
    table = RouteTable()
    table.add("/Case", {"target": T1})
    assert table.get("/case") is None
    assert table.longest_match("/case/x") is None
    assert "/Case" in table and "/case" not in table


def test_path_named_like_object_properties_routes_normally():
    table = RouteTable()
    table.add("/", {"target": T1})
    assert table.longest_match("/constructor/__proto__").prefix == "/"
