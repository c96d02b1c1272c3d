#!/usr/bin/env python3
"""Prints N distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range.

bind(0) hands out ports from the ephemeral range, which the benchmark's own client connections
(ab, wrk, a proxy's upstream side) also take as source ports: a port chosen that way can be in
use, or in TIME_WAIT, by the time a server binds it. Ports under the range are not.
"""
import random
import socket
import sys

n = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low = int(f.read().split()[0])
held, ports = [], []
for port in random.sample(range(10000, low), low - 10000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
    if len(ports) == n:
        break
print(*ports)
