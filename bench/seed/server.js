// The seed's design, for comparison under `just bench`: Node cluster + Express +
// rate-limiter-flexible on Redis. One process per core; per user 1 task a second and 20 a
// minute (two RateLimiterRedis); each run appends a completion line. A task over a limit
// is answered 202 and queued, by SEED_QUEUE:
// - `memory` (the default): retried in this process when the limiter says, by a timer of
//   its own (RateLimiterQueue would keep one queue per user; here a user's queued tasks
//   run in no fixed order); a crash loses it;
// - `bullmq`: added to a BullMQ queue in the same Redis as a job delayed by as long, which
//   the workers' BullMQ Worker runs then, after asking the limiter again (and delays again
//   when it refuses): queued tasks survive a crash, as Sluice's do.
// Either way the minute is a fixed window, not a sliding one.
'use strict';
const cluster = require('node:cluster');
const os = require('node:os');
const fs = require('node:fs');
const crypto = require('node:crypto');

const workers = Number(process.env.SEED_WORKERS || os.availableParallelism());
if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (w, code) => { console.error(`worker ${w.process.pid} exited ${code}`); process.exit(1); });
  process.stdin.on('end', () => process.exit(0)).resume(); // exit with the bench
} else {
  process.on('disconnect', () => process.exit(0)); // the primary is gone
  const express = require('express');
  const Redis = require('ioredis');
  const { RateLimiterRedis } = require('rate-limiter-flexible');

  const redis = new Redis({ path: process.env.SEED_REDIS, enableOfflineQueue: true });
  const second = new RateLimiterRedis({ storeClient: redis, keyPrefix: 's', points: 1, duration: 1 });
  const minute = new RateLimiterRedis({ storeClient: redis, keyPrefix: 'm', points: 20, duration: 60 });
  const log = fs.openSync(process.env.SEED_LOG, 'a');
  const queue = process.env.SEED_QUEUE === 'bullmq' ? bullmq() : memory();

  // Both limits or neither: the second is given back when the minute refuses.
  async function take(user) {
    try {
      await second.consume(user);
    } catch (r) {
      if (r instanceof Error) throw r;
      return r.msBeforeNext;
    }
    try {
      await minute.consume(user);
    } catch (r) {
      if (r instanceof Error) throw r;
      await second.reward(user);
      return r.msBeforeNext;
    }
    return 0;
  }

  function run(task) {
    const now = Date.now();
    fs.writeSync(log, JSON.stringify({ user_id: task.user_id, task_id: task.task_id, started_at: now, completed_at: now }) + '\n');
    return now;
  }

  // Each queue is a function that takes a task to run after `wait` ms, once the limiter agrees.
  function memory() {
    const later = (task, wait) => setTimeout(async () => {
      try {
        const again = await take(task.user_id);
        if (again > 0) later(task, again); else run(task);
      } catch (e) {
        later(task, 1000);
      }
    }, wait);
    return later;
  }

  function bullmq() {
    const { Queue, Worker, DelayedError } = require('bullmq');
    const connection = { path: process.env.SEED_REDIS, maxRetriesPerRequest: null };
    const tasks = new Queue('tasks', { connection });
    new Worker('tasks', async (job, token) => {
      const again = await take(job.data.user_id);
      if (again > 0) {
        await job.moveToDelayed(Date.now() + again, token);
        throw new DelayedError();
      }
      run(job.data);
    }, { connection, concurrency: 50 });
    const options = { removeOnComplete: true, removeOnFail: 1000 };
    return (task, wait) => tasks.add('task', task, { ...options, delay: wait, jobId: task.task_id });
  }

  const app = express();
  app.use(express.json());
  app.post('/task', async (req, res) => {
    const user = req.body && req.body.user_id;
    if (typeof user !== 'string' || user.length === 0) return res.status(422).json({ error: 'user_id required' });
    const task = { task_id: crypto.randomUUID(), user_id: user, payload: req.body.payload ?? null };
    try {
      const wait = await take(user);
      if (wait === 0) {
        const at = run(task);
        return res.status(200).json({ status: 'completed', task_id: task.task_id, user_id: user, started_at: at, completed_at: at });
      }
      await queue(task, wait);
      return res.status(202).json({ status: 'queued', task_id: task.task_id, user_id: user, run_at: Date.now() + wait });
    } catch (e) {
      return res.status(503).json({ error: String(e) });
    }
  });
  app.listen(Number(process.env.SEED_PORT), '127.0.0.1');
}
