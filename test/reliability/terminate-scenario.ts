/**
 * The termination scenario, shared by worker-terminate.test.ts and regressions.test.ts: in a
 * child Node process, Workers of the given kinds (blocking-worker.ts) are ended at random points,
 * each ending checked to settle within a bound and to leave the process's fds, KVM fds, KVM
 * mappings and threads exactly at their baseline; at the end process.exit() runs with a Worker
 * still blocked (in a synchronous call where the kinds have one), and must exit.
 */
import { expect, type TestContext } from 'vitest';
import { hangBound } from '../kvm-host.js';
import { blockingWorker, SYNC_KINDS } from './blocking-worker.js';
import { expectEnded, prelude, result, runNode, scratch, seedOf, summary, writeModule } from './harness.js';

/** How long an ending may take to settle (terminate() or the Worker's own exit). */
export const SETTLE_MS = hangBound(5_000);

export interface TerminateOptions {
  /** Rounds per kind: each starts a Worker and ends it. */
  rounds: number;
  /** The share of rounds ended while the Worker starts (loading the library, making its objects). */
  startupShare: number;
}

interface Round {
  kind: string;
  ending: string;
  phase: string;
  delay: number;
  settleMs: number;
  exitCode: number;
  errors: unknown[];
  left: { fds: number; extra: string[]; kvm: string[]; maps: string[]; threads: number };
}

function source(kinds: readonly string[], seed: number, o: TerminateOptions): string {
  const worker = writeModule('blocking-worker', blockingWorker());
  return `${prelude(seed)}
import { Worker } from 'node:worker_threads';
const KINDS = ${JSON.stringify(kinds)};
const SYNC = ${JSON.stringify(SYNC_KINDS)};
const counter = new SharedArrayBuffer(4);
const ops = new Int32Array(counter);
const start = (kind, ending, endAfter, warm = false) => {
  const w = new Worker(${JSON.stringify(worker)}, {
    workerData: { kind, ending, endAfter, counter, dir: ${JSON.stringify(scratch())}, warm, kinds: KINDS }, execArgv: [],
  });
  const errors = [];
  w.on('error', (e) => { if (e?.message !== 'boom') errors.push(describeError(e)); });
  const message = new Promise((r) => w.once('message', r));
  const exited = new Promise((r) => w.once('exit', r));
  return { w, errors, message, exited };
};
// Warm-up: one Worker makes each kind's calls once, bounded, closing everything: what a process
// sets up once (libuv's pool, the vCPU watchdog thread) belongs to the baseline.
{
  const r = start(undefined, 'close', 0, true);
  await r.exited;
  if (r.errors.length) { out({ type: 'result', failed: 'warm-up', errors: r.errors }); process.exit(1); }
}
const base = snap();
let prev = base;
const rounds = [];
let readyMs = 200;
const order = [];
for (let i = 0; i < ${o.rounds}; i++) order.push(...KINDS);
for (let i = order.length - 1; i > 0; i--) { const j = randInt(0, i); [order[i], order[j]] = [order[j], order[i]]; }
for (const kind of order) {
  const startup = rand() < ${o.startupShare};
  const ending = startup || SYNC.includes(kind) ? 'terminate' : pick(['terminate', 'terminate', 'exit', 'throw']);
  const delay = startup ? randInt(0, readyMs) : randInt(0, 40);
  const t0 = performance.now();
  const r = start(kind, ending, delay);
  if (startup) {
    await Promise.race([sleep(delay), r.exited]);
  } else {
    const first = await Promise.race([r.message.then(() => 'ready'), r.exited.then(() => 'exited')]);
    if (first !== 'ready') { out({ type: 'result', failed: 'exited before ready', kind, errors: r.errors }); process.exit(1); }
    readyMs = Math.round((readyMs + performance.now() - t0) / 2);
    if (ending === 'terminate') await sleep(delay);
  }
  const t1 = performance.now();
  const ended = ending === 'terminate' ? r.w.terminate() : r.exited;
  const settled = await Promise.race([ended.then(() => true), sleep(${SETTLE_MS} + delay).then(() => false)]);
  const settleMs = Math.round(performance.now() - t1);
  if (!settled) {
    out({ type: 'result', failed: 'did not settle', kind, ending, phase: startup ? 'startup' : 'blocked', delay, settleMs });
    process.exit(7); // hangs too, if the Worker cannot be stopped: the harness's timeout then ends it
  }
  const exitCode = await r.exited;
  const now = snap();
  rounds.push({
    kind, ending, phase: startup ? 'startup' : 'blocked', delay, settleMs, exitCode, errors: r.errors,
    left: { fds: now.fds - base.fds, extra: newLinks(base.links, now.links), kvm: now.kvm, maps: now.maps, threads: now.threads - base.threads },
    added: newLinks(prev.links, now.links), // this round's own, for the reader: the check is against the baseline
  });
  prev = now;
}
// A Worker blocked in a synchronous call (else in an asynchronous one), then process.exit(): it
// terminates the Worker and must not hang.
const lastKinds = [KINDS.find((k) => SYNC.includes(k)) ?? KINDS[0]];
const last = lastKinds.map((kind) => start(kind, 'terminate', 0));
await Promise.all(last.map((r) => Promise.race([r.message, r.exited])));
await sleep(20);
out({ type: 'result', rounds, ops: Atomics.load(ops, 0) });
process.exit(5);
`;
}

/** Runs the scenario for `kinds` and checks every round; prints the summary line. */
export async function terminateScenario(ctx: TestContext, name: string, kinds: readonly string[], o: TerminateOptions): Promise<void> {
  const seed = seedOf(name);
  await ctx.annotate(`seed ${seed}`);
  const c = await runNode(source(kinds, seed, o), { timeoutMs: 120_000 });
  // process.exit(5) with every kind blocked in a Worker: it returned.
  expectEnded(c, seed, 5);
  const r = result<{ rounds: Round[]; ops: number; failed?: string }>(c);
  expect(r.failed, `seed ${seed}: ${JSON.stringify(r)}`).toBeUndefined();
  expect(r.rounds.length).toBe(kinds.length * o.rounds);
  const bad = r.rounds.filter((x) => x.errors.length > 0 || x.left.fds !== 0 || x.left.kvm.length > 0 || x.left.maps.length > 0 ||
    x.left.threads !== 0 || x.settleMs > SETTLE_MS);
  const by = (f: (x: Round) => boolean) => r.rounds.filter(f).length;
  summary(name, {
    workers: r.rounds.length + 2,
    terminated: by((x) => x.ending === 'terminate'),
    exited: by((x) => x.ending === 'exit'),
    threw: by((x) => x.ending === 'throw'),
    inStartup: by((x) => x.phase === 'startup'),
    calls: r.ops,
    leaky: bad.length,
  }, c.ms);
  expect(bad, `seed ${seed}: rounds that left something behind or errored`).toEqual([]);
}
