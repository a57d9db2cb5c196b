#!/usr/bin/env python3
"""Calls and inclusive instructions per call of the functions matching REGEX in a callgrind
file (e.g. the per-packet cost of the packet filter, from a dp-micro run under callgrind):

  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.hit dp-micro filter_hit
  bench/cgcalls.py /tmp/cg.hit 'ActiveFilter::check$|filter::parse$'

Counts every call site of a function (recursive functions would be counted twice).
"""
import collections
import re
import sys

path, pattern = sys.argv[1], re.compile(sys.argv[2])
names, calls, incl = {}, collections.Counter(), collections.Counter()
callee, pending = None, False
with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
        m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3).strip()
            callee = m.group(2) if m.group(1) else None
            continue
        if line.startswith("calls=") and callee:
            calls[callee] += int(line.split()[0][6:])
            pending = True
            continue
        if pending:
            incl[callee] += int(line.split()[1])
            pending = False
for i, c in sorted(calls.items(), key=lambda x: -incl[x[0]]):
    if pattern.search(names.get(i, "")):
        print("%10d calls %12d Ir %9.1f Ir/call  %s" % (c, incl[i], incl[i] / c, names[i][:90]))
