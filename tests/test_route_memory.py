"""Memory per route (issue 6: RSS with 100,000 routes): what routes share instead of copying,
and that the sharing never lets one route's state leak into another's."""

from __future__ import annotations

import asyncio

from cfproxy.api.handlers import post_routes
from cfproxy.app import App
from cfproxy.config import Config
from cfproxy.routing import trie
from cfproxy.routing.table import RouteTable

T = "http://127.0.0.1:9100"


def _post(app: App, path: str, body: bytes) -> int:
    return asyncio.run(post_routes(app, path, "", body)).status


def test_routes_posted_with_one_target_share_its_parsed_form_and_string():
    app = App(Config())
    body = b'{"target": "' + T.encode() + b'"}'
    assert _post(app, "/user/a", body) == 201
    assert _post(app, "/user/b", body) == 201
    a, b = app.table.get("/user/a"), app.table.get("/user/b")
    assert a.target is b.target
    assert a.data["target"] is b.data["target"] == T


def test_route_prefix_is_the_table_key_string():
    table = RouteTable()
    route = table.add("/user/a/", {"target": T})
    assert route.prefix == "/user/a"
    key = next(k for k in table._routes if k == "/user/a")
    assert route.prefix is key


def test_host_routing_keeps_the_posted_case_in_the_prefix():
    table = RouteTable(host_routing=True)
    route = table.add("/Example.COM/x", {"target": T})
    assert route.prefix == "/Example.COM/x"
    assert table.get("/example.com/x") is route


def test_leaves_share_the_empty_children_dict_and_it_stays_empty():
    t = trie.URLTrie()
    for path in ("/a/b", "/a", "/c/d/e", "/c/d"):
        t.add(path, path)
    t.remove("/a/b")
    t.add("/a/b/c", "x")
    t.add("/c/d/e/f", "y")
    assert trie._NO_CHILDREN == {}
    assert t.find("/a/b/c").children is trie._NO_CHILDREN
    assert t.find("/c/d/e/f").children is trie._NO_CHILDREN
    assert t.lookup("/a/b/c/z") == "x" and t.lookup("/c/d/e/f/g") == "y" and t.lookup("/a/q") == "/a"
    # a node's prefix is the key it was added under
    assert t.find("/c/d/e/f").prefix == "/c/d/e/f"
