"""URLTrie, sans I/O: CHP's trie_spec.js (reference 9.5), quirk Q12, and scale (100,000 routes)."""

from __future__ import annotations

import time

import pytest

from cfproxy.routing.trie import URLTrie, join_path, split_path


def full_trie() -> URLTrie:
    trie = URLTrie()
    for path in ["/1", "/2", "/a/b/c/d", "/a/b/d", "/a/b/e", "/b", "/b/c", "/b/c/d"]:
        trie.add(path, {"path": path})
    return trie


def match(trie: URLTrie, path: str) -> str | None:
    node = trie.lookup_node(path)
    return None if node is None else node.prefix


# --- splitting -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, segments", [
    ("/", []),
    ("", []),
    ("///", []),
    ("/a/b/", ["a", "b"]),
    ("a/b", ["a", "b"]),
    ("//a/b//", ["a", "b"]),
    ("/a//b", ["a", "", "b"]),
    ("/user/zoë", ["user", "zoë"]),
])
def test_split_path_strips_all_outer_slashes_and_keeps_inner_empty_segments(path, segments):
    assert split_path(path) == segments


def test_join_path_is_the_inverse_of_split_path_on_canonical_keys():
    for key in ["/", "/a", "/a/b", "/a//b", "/ sp ace/é"]:
        assert join_path(split_path(key)) == key


# --- trie_spec 1-3: construction and add ---------------------------------------------------

def test_new_trie_has_root_prefix_no_value_no_branches():
    trie = URLTrie()
    assert trie.root.prefix == "/"
    assert trie.root.size == 0
    assert trie.root.value is None
    assert trie.root.children == {}
    assert len(trie) == 0


def test_root_value_matches_any_path_and_the_empty_path():
    trie = URLTrie()
    trie.add("/", "root")
    for path in ["/1/etc/etc/", "/", ""]:
        node = trie.lookup_node(path)
        assert node is not None and node.prefix == "/" and node.value == "root"


def test_add_without_leading_slash_and_node_prefixes():
    trie = URLTrie()
    trie.add("foo", 1)
    assert trie.root.size == 1
    assert trie.root.children["foo"].prefix == "/foo"
    trie.add("/bar/", 2)
    trie.add("/a/b/c/d", 3)
    assert trie.root.size == 3
    assert trie.root.children["bar"].prefix == "/bar"
    node = trie.find("/a/b/c/d")
    assert node is not None and node.prefix == "/a/b/c/d" and node.value == 3
    # intermediate nodes carry no value
    for inner in ["/a", "/a/b", "/a/b/c"]:
        assert trie.find(inner).value is None
    assert len(trie) == 3


def test_add_replaces_the_value_at_the_same_path():
    trie = URLTrie()
    trie.add("/x", 1)
    trie.add("/x/", 2)
    assert trie.lookup("/x/y") == 2
    assert len(trie) == 1


def test_none_values_are_refused():
    with pytest.raises(ValueError):
        URLTrie().add("/x", None)


# --- trie_spec 4: get ------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("/not/found", None),
    ("/1/etc/etc/", "/1"),
    ("/a", None),
    ("/a/b/c", None),
    ("/a/b/c/d/e/f", "/a/b/c/d"),
    ("/b/c/d/word", "/b/c/d"),
    ("/b/c/dword", "/b/c"),
    ("/b/c/d", "/b/c/d"),
    ("/bword", None),
    ("/1", "/1"),
    ("1", "/1"),
    ("/1/", "/1"),
])
def test_lookup_returns_the_deepest_node_with_a_value_segment_wise(path, expected):
    trie = full_trie()
    assert match(trie, path) == expected
    value = trie.lookup(path)
    assert (value["path"] if value else None) == expected


def test_inner_empty_segments_are_distinct_from_collapsed_ones():
    trie = URLTrie()
    trie.add("/a//b", "double")
    trie.add("/a/b", "single")
    assert trie.lookup("/a//b/x") == "double"
    assert trie.lookup("/a/b/x") == "single"
    assert trie.lookup("/a/x") is None


def test_lookup_is_case_and_byte_exact():
    trie = URLTrie()
    trie.add("/User/zoë", 1)
    assert trie.lookup("/user/zoë") is None
    assert trie.lookup("/User/zoe") is None
    assert trie.lookup("/User/zoë/lab") == 1


# --- trie_spec 5-7: remove -----------------------------------------------------------------

def test_remove_keeps_descendants_and_forgets_the_removed_prefix():
    trie = full_trie()
    trie.add("/", {"path": "/"})
    assert trie.remove("/b") == {"path": "/b"}
    assert match(trie, "/b/c") == "/b/c"
    assert match(trie, "/b/just-b") == "/"


def test_removing_the_only_leaf_prunes_empty_intermediate_nodes():
    trie = full_trie()
    b = trie.find("/a/b")
    assert b.size == 3
    trie.remove("/a/b/c/d")
    assert b.size == 2
    assert trie.find("/a/b/c") is None
    trie.remove("/a/b/d")
    trie.remove("/a/b/e")
    assert "a" not in trie.root.children  # the whole empty branch is gone


def test_removing_root_clears_its_value_but_keeps_the_tree():
    trie = full_trie()
    trie.add("/", "root")
    assert trie.remove("/") == "root"
    assert trie.lookup("/zzz") is None
    assert match(trie, "/1/x") == "/1"


def test_remove_of_missing_or_valueless_paths_changes_nothing():
    trie = full_trie()
    before = len(trie)
    assert trie.remove("/nope/nothing") is None
    assert trie.remove("/a/b") is None  # exists as a node, holds no value
    assert len(trie) == before
    assert match(trie, "/a/b/c/d") == "/a/b/c/d"


def test_routes_added_under_a_root_route_only_capture_their_own_subtree():
    trie = URLTrie()
    trie.add("/", "root")
    trie.add("/prefix/sub/tree", "tree")
    assert trie.lookup("/prefix") == "root"
    assert trie.lookup("/prefix/sub") == "root"
    assert trie.lookup("/prefix/sub/tree/x") == "tree"
    trie.add("/prefix", "prefix")
    assert trie.lookup("/prefix") == "prefix"
    assert trie.lookup("/prefix/sub") == "prefix"


def test_remove_with_trailing_slash_removes_the_route_and_root_still_matches():
    trie = URLTrie()
    trie.add("/", "root")
    trie.add("/prefix", "prefix")
    trie.remove("/prefix/")
    assert trie.lookup("/prefix") == "root"
    assert trie.find("/prefix") is None


# --- Q12: object-property names are plain segments ------------------------------------------

@pytest.mark.parametrize("seg", ["constructor", "__proto__", "toString", "hasOwnProperty",
                                 "valueOf", "__class__", "__dict__", "get", "items"])
def test_segments_named_like_object_properties_are_ordinary_keys(seg):
    trie = URLTrie()
    trie.add("/", "root")
    trie.add("/a", "a")
    assert trie.lookup(f"/{seg}") == "root"
    assert trie.lookup(f"/a/{seg}/x") == "a"
    trie.add(f"/{seg}", seg)
    assert trie.lookup(f"/{seg}/y") == seg
    assert trie.remove(f"/{seg}") == seg
    assert trie.lookup(f"/{seg}") == "root"


# --- scale ---------------------------------------------------------------------------------

def _per_lookup_us(trie: URLTrie, paths: list[str], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for p in paths:
            trie.lookup(p)
        best = min(best, time.perf_counter() - t0)
    return best / len(paths) * 1e6


def test_100000_routes_match_correctly_and_lookup_cost_does_not_grow_with_route_count():
    big = URLTrie()
    n = 100_000
    for i in range(n):
        big.add(f"/user/u{i}", i)
    big.add("/", "root")
    assert len(big) == n + 1
    # correctness across the whole table
    for i in range(0, n, 997):
        assert big.lookup(f"/user/u{i}/lab/tree/x.ipynb") == i
    assert big.lookup("/user/u100000/x") == "root"
    assert big.lookup("/user/u1x") == "root"
    # removing half keeps the rest intact
    for i in range(0, n, 2):
        big.remove(f"/user/u{i}")
    assert big.lookup("/user/u2/x") == "root"
    assert big.lookup("/user/u3/x") == 3
    assert len(big) == n // 2 + 1

    small = URLTrie()
    for i in range(10):
        small.add(f"/user/u{i}", i)
    small.add("/", "root")
    big_paths = [f"/user/u{i}/lab/tree/notebook.ipynb" for i in range(1, 2001, 2)]
    small_paths = [f"/user/u{i % 10}/lab/tree/notebook.ipynb" for i in range(1000)]
    t_big = _per_lookup_us(big, big_paths)
    t_small = _per_lookup_us(small, small_paths)
    print(f"\nlookup: 10 routes {t_small:.2f} us, 50,001 routes {t_big:.2f} us, "
          f"ratio {t_big / t_small:.2f}")
    # generous bound (a linear scan over 50,000 routes would be ~1000x): not a timing assert
    assert t_big < 20 * t_small + 5
