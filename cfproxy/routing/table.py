"""RouteTable: the routes, their data and last_activity, over a radix trie.

(Stub: the interface every layer codes against. Implementation pending.)

    table = RouteTable(host_routing=False)
    route = table.add("/user/a", {"target": "http://127.0.0.1:9000", ...})  # key already cleaned
    table.get("/user/a") -> Route | None            # exact key
    table.longest_match("/user/a/lab/tree") -> Route | None   # segment-wise longest prefix
    table.remove("/user/a") -> bool
    for route in table: ...                         # insertion order (replace keeps position)
    len(table)

Route has: prefix (the key), data (dict, as posted, without last_activity),
target (cfproxy.routing.target.Target, parsed once), last_activity (float, time.time()).
"""
