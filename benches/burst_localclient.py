# The Salt-client half of `benches/burst.rs`: N publishes of `cmd.run_all true` to '*' through
# Salt's own LocalClient from one Python process, timed until the last publish returns.
#
# Usage: python burst_localclient.py MASTER_CONFIG N
# Prints "ready" once the client is built, waits for a line on stdin (so the caller can sample
# the master's CPU right before), publishes, then prints one line: "done " + JSON with the wall
# clock at start and end, the jids, the failures and this process's own CPU seconds.
import json
import os
import sys
import time

import salt.client


def main():
    conf, count = sys.argv[1], int(sys.argv[2])
    client = salt.client.LocalClient(c_path=conf)
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = os.times()
    start = time.time()
    jids, failed = [], 0
    for _ in range(count):
        try:
            jid = client.cmd_async("*", "cmd.run_all", ["true"])
        except Exception as e:  # a failed publish is counted, not fatal: the loop is the measure
            print(f"publish failed: {e}", file=sys.stderr, flush=True)
            jid = 0
        if jid:
            jids.append(jid)
        else:
            failed += 1
    end = time.time()
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out = {"start": start, "end": end, "jids": jids, "failed": failed, "cpu": cpu}
    print("done " + json.dumps(out), flush=True)


main()
