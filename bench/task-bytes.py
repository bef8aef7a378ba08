#!/usr/bin/env python3
"""Redis bytes per task under Sluice, for sizing Redis: a fresh redis-server configured by
redis.conf and a release Sluice (one worker), both on this machine.

usage: bench/task-bytes.py [PAYLOAD_BYTES]   (just bench-memory PAYLOAD_BYTES)
       BENCH_REDIS_ARGS='--hash-max-ziplist-value 64' adds redis-server flags

Reads Redis's used_memory after each of: 10,000 users' first tasks (each runs at once); a
second task each a second later (runs at once too); two minutes later, when the users' starts
have expired (a start list goes one to two longest windows after its newest start: see
reserve.lua) and what is left is what Redis keeps for TASK_TTL_SECS; then 10,000 more tasks
over 100 of those users (most are queued).
"""
import http.client, os, socket, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
payload_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else 0
payload = '"' + 'x' * max(payload_bytes - 2, 0) + '"' if payload_bytes else 'null'
tmp = tempfile.mkdtemp(prefix='sluice-task-bytes-')
sock = f'{tmp}/redis.sock'
extra = os.environ.get('BENCH_REDIS_ARGS', '').split()  # as for just bench: override redis.conf
redis = subprocess.Popen(['redis-server', f'{root}/redis.conf', '--port', '0', '--unixsocket', sock, '--dir', tmp, *extra],
                         stdout=subprocess.DEVNULL)
while not os.path.exists(sock):
    time.sleep(0.05)
probe = socket.socket(); probe.bind(('127.0.0.1', 0)); port = probe.getsockname()[1]; probe.close()
env = dict(os.environ, PORT=str(port), BIND='127.0.0.1', WORKERS='1', REDIS_URL=f'unix://{sock}',
           POLICY_DIR=f'{root}/policies/dist', POLICY='default', TASK_LOG=f'{tmp}/log.jsonl', RUST_LOG='warn')
sluice = subprocess.Popen([f'{root}/target/release/sluice'], env=env)


def cli(*args):
    return subprocess.run(['redis-cli', '-s', sock, *args], capture_output=True, text=True).stdout.strip()


def used_memory():
    cli('MEMORY', 'PURGE')
    line = next(l for l in cli('INFO', 'memory').splitlines() if l.startswith('used_memory:'))
    return int(line.split(':')[1])


def post_all(conn, n, users):
    """Post n tasks round-robin over `users`; the answers by status, and how many were stored."""
    codes = {}
    for i in range(n):
        body = f'{{"user_id":"user-{i % users}","payload":{payload}}}'
        conn.request('POST', '/task', body=body, headers={'content-type': 'application/json'})
        answer = conn.getresponse(); answer.read()
        codes[answer.status] = codes.get(answer.status, 0) + 1
    return codes, codes.get(200, 0) + codes.get(202, 0)


try:
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection('127.0.0.1', port); conn.request('GET', '/readyz')
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        sys.exit('Sluice did not become ready')
    conn = http.client.HTTPConnection('127.0.0.1', port)
    n = 10_000
    start = used_memory()
    codes, stored = post_all(conn, n, n); first = used_memory()
    print(f'payload {payload_bytes} bytes')
    print(f"  a user's first task, run at once {codes}: {(first - start) / stored:.0f} bytes each")
    time.sleep(1.2)
    codes, more = post_all(conn, n, n); second = used_memory()
    print(f"  a second task a second later, run at once {codes}: {(second - first) / more:.0f} bytes each")
    time.sleep(121)
    kept = used_memory()
    print(f'  two minutes later, kept for TASK_TTL_SECS: {(kept - start) / (stored + more):.0f} bytes per run task')
    conn = http.client.HTTPConnection('127.0.0.1', port)  # Sluice closed the idle one
    codes, queued = post_all(conn, n, 100); last = used_memory()
    print(f'  further tasks of 100 users, most queued {codes}: {(last - kept) / queued:.0f} bytes each')
finally:
    sluice.terminate(); sluice.wait(); redis.terminate(); redis.wait()
    subprocess.run(['rm', '-rf', tmp])
