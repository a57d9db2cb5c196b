#!/usr/bin/env python3
"""Policies (and extra static peers) for the packet-filter cost benchmark (issue 16).

  filter-policy.py rules10 WORKDIR   -> WORKDIR/policy.hujson: 10 rules, 2 nodes
  filter-policy.py big WORKDIR       -> WORKDIR/policy.hujson: 10,000 rules over 20 groups of
                                        1,000 nodes, and WORKDIR/extra-peers.yaml: 998 more
                                        static peers (random keys, no endpoint) for each node
  filter-policy.py peers1k WORKDIR   -> only WORKDIR/extra-peers.yaml (the 998 peers of `big`),
                                        no policy: what 1,000 peers cost without the filter

Both allow what the harness needs between bench-a and bench-b (iperf3 TCP 5201-5210, UDP,
ICMP, the latency probe on 7777) by port rules, so the dataplane does a real range lookup for
every new flow; everything else is default-deny.
"""
import base64
import os
import sys

kind, work = sys.argv[1], sys.argv[2]
pair = '{"action": "accept", "src": ["bench-a", "bench-b"], "dst": ["bench-a:5201-5210,7777", "bench-b:5201-5210,7777"]},\n'
for proto in ("udp", "icmp"):
    pair += '{"action": "accept", "src": ["bench-a", "bench-b"], "dst": ["bench-a:*", "bench-b:*"], "proto": "%s"},\n' % proto
if kind == "rules10":
    rules = [
        f'{{"action": "accept", "src": ["bench-a"], "dst": ["bench-b:{2000 + i}"]}},\n'
        for i in range(8)
    ]
    text = '{"default": "deny", "acls": [\n' + "".join(rules) + pair + "]}\n"
elif kind in ("big", "peers1k"):
    names = [f"x{i}" for i in range(998)]
    with open(os.path.join(work, "extra-peers.yaml"), "w") as f:
        for i, n in enumerate(names):
            key = base64.b64encode(os.urandom(32)).decode()
            f.write(f"  - name: {n}\n    public_key: \"{key}\"\n")
            f.write(f"    allowed_ips: [10.200.{i // 250}.{i % 250 + 1}/32]\n")
    if kind == "peers1k":
        sys.exit(0)
    everyone = ["bench-a", "bench-b"] + names
    groups = {f"group:g{g}": [n for i, n in enumerate(everyone) if i % 20 == g] for g in range(20)}
    gtext = ", ".join(f'"{g}": [{", ".join(chr(34) + n + chr(34) for n in ms)}]' for g, ms in groups.items())
    rules = [
        f'{{"action": "accept", "src": ["group:g{i % 20}"], "dst": ["{"bench-a" if i % 2 else "bench-b"}:{1000 + i % 4000}"]}},\n'
        for i in range(9998)
    ]
    text = '{"default": "deny", "groups": {' + gtext + '}, "acls": [\n' + "".join(rules) + pair + "]}\n"
else:
    sys.exit(f"unknown kind {kind!r} (rules10 | big | peers1k)")
with open(os.path.join(work, "policy.hujson"), "w") as f:
    f.write(text)
