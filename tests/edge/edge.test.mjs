// The example policies' wasm-bindgen build under Node: the same scripted sequence as the
// native double (limiter-edge tests), with the counters kept here in JS, must give the
// same decisions. Run by `just test-edge`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);
const edge = createRequire(import.meta.url)(new URL('target/edge/limiter_edge.js', root).pathname);
const script = JSON.parse(readFileSync(new URL('tests/edge/script.json', root)));
const expected = JSON.parse(readFileSync(new URL('target/edge/expected.json', root)));

// The JS side's counters: the rule of limiter_wasm::testing::MemoryHost, in JS.
class Counters {
  constructor() { this.now = 0; this.user = ''; this.users = new Map(); }
  state() {
    if (!this.users.has(this.user)) this.users.set(this.user, { starts: [], tat: 0 });
    return this.users.get(this.user);
  }
  nowMs() { return this.now; }
  log() {}
  reserve(windows, maxDelayMs) {
    const u = this.state();
    let slot = Math.max(this.now, u.starts.length ? u.starts[u.starts.length - 1] : -Infinity);
    for (let i = 0; i < windows.length; i += 2) {
      const [limit, ms] = [windows[i], windows[i + 1]];
      if (u.starts.length >= limit) slot = Math.max(slot, u.starts[u.starts.length - limit] + ms);
    }
    if (slot - this.now > maxDelayMs) return [1, slot, this.now];
    u.starts.push(slot);
    return [0, slot, this.now];
  }
  reserveBucket(intervalMs, burst, maxDelayMs) {
    const u = this.state();
    const tat = Math.max(u.tat, this.now);
    const slot = Math.max(this.now, tat - (burst - 1) * intervalMs);
    if (slot - this.now > maxDelayMs) return [1, slot, this.now];
    u.tat = Math.max(tat, slot) + intervalMs;
    return [0, slot, this.now];
  }
}

test('the edge build decides exactly like the native double', () => {
  assert.equal(script.calls.length, expected.length);
  const hosts = {};
  script.calls.forEach(([at, policy, user, plan], i) => {
    const host = (hosts[policy] ??= new Counters());
    host.now = at;
    host.user = user;
    const got = Array.from(edge[`decide_${policy}`](user, plan, 'null', host));
    assert.deepEqual(got, expected[i], `call ${i}: ${policy} for ${user} at ${at} ms`);
  });
});
