#!/usr/bin/env python3
"""Redis bytes per task under Sluice, for sizing Redis: a fresh redis-server configured by
redis.conf and a release Sluice (one worker), both on this machine.

usage: bench/task-bytes.py [PAYLOAD_BYTES]   (just bench-memory PAYLOAD_BYTES)

Posts 10,000 tasks for 10,000 users (each runs at once: a user's first task), then 10,000
more over 100 of those users (most are queued), and reads Redis's used_memory after each.
"""
import http.client, os, socket, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
payload_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else 0
payload = '"' + 'x' * max(payload_bytes - 2, 0) + '"' if payload_bytes else 'null'
tmp = tempfile.mkdtemp(prefix='sluice-task-bytes-')
sock = f'{tmp}/redis.sock'
redis = subprocess.Popen(['redis-server', f'{root}/redis.conf', '--port', '0', '--unixsocket', sock, '--dir', tmp],
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
    codes = {}
    for i in range(n):
        body = f'{{"user_id":"user-{i % users}","payload":{payload}}}'
        conn.request('POST', '/task', body=body, headers={'content-type': 'application/json'})
        answer = conn.getresponse(); answer.read()
        codes[answer.status] = codes.get(answer.status, 0) + 1
    return codes


try:
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection('127.0.0.1', port); conn.request('GET', '/readyz')
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    conn = http.client.HTTPConnection('127.0.0.1', port)
    n = 10_000
    before = used_memory()
    codes = post_all(conn, n, n); first = used_memory()
    print(f'payload {payload_bytes} bytes; a user\'s first task (answers {codes}): {(first - before) / n:.0f} bytes each')
    codes = post_all(conn, n, 100); more = used_memory()
    print(f'further tasks of 100 users (answers {codes}): {(more - first) / n:.0f} bytes each')
finally:
    sluice.terminate(); sluice.wait(); redis.terminate(); redis.wait()
    subprocess.run(['rm', '-rf', tmp])
