// Children spawned from Workers and from the main thread while other Workers create, send,
// receive and close every kind of fd the library makes (issue 11): no child may ever hold a
// guest_memfd, a VM, a vCPU, /dev/kvm, or any fd beyond its stdio. Each child lists its own fd
// table (`ls -l /proc/self/fd`, some through a shell, some a Node child reading /proc/self/fd),
// so what it inherited across exec is what it shows. Afterwards the process's fds and KVM
// mappings are back at their baseline. Runs in a child Node process with a timeout.
import { describe, expect, it, type TestContext } from 'vitest';
import { hangBound, openKvm } from '../kvm-host.js';
import { creatorWorker, PARSE_LISTING, spawnerWorker } from './fd-creators.js';
import { expectEnded, prelude, result, runNode, scaled, scratch, seedOf, summary, writeModule } from './harness.js';

/** Children the spawner Worker spawns, children the main thread spawns, Node children among those. */
const SPAWNER_CHILDREN = scaled(6);
const MAIN_CHILDREN = scaled(4);
const NODE_CHILDREN = scaled(1);
/** With KVM the Node child is left out: it costs seconds under emulation and sees what ls sees. */
const nodeChildren = (kvm: boolean) => (kvm ? 0 : NODE_CHILDREN);
/**
 * Creator Workers (one: under QEMU's single-threaded emulation every thread shares one host CPU,
 * and a second creator only slows the spawners down), their most iterations each (they stop when
 * the spawners are done), and 1 in N of their objects held across a spawn.
 */
const CREATORS = 1;
const CREATOR_MAX = scaled(3000);
const SPAWN_EVERY = 24;

function source(seed: number, kvm: boolean): string {
  const creator = writeModule('creator', creatorWorker());
  const spawner = writeModule('spawner', spawnerWorker());
  return `${prelude(seed)}
${PARSE_LISTING}
import { Worker } from 'node:worker_threads';
import { spawn, spawnSync } from 'node:child_process';
const stop = new SharedArrayBuffer(4);
const worker = (file, data) => {
  const w = new Worker(file, { workerData: data, execArgv: [] });
  const errors = [];
  w.on('error', (e) => errors.push(describeError(e)));
  const exited = new Promise((r) => w.once('exit', r));
  const message = (pred) => new Promise((r) => { const on = (m) => { if (pred(m)) { w.off('message', on); r(m); } }; w.on('message', on); });
  return { w, errors, started: message((m) => m.started), done: Promise.race([message((m) => !m.started), exited.then(() => ({ ops: {}, spawned: 0, listings: [] }))]), exited };
};
const creatorData = (max) => ({ seed: SEED_HERE, kvm: ${kvm}, stop, max, spawnEvery: ${SPAWN_EVERY}, dir: ${JSON.stringify(scratch())} });
// A child of the main thread, spawned asynchronously: ls, ls through a shell, or a Node child.
const NODE_LIST = "const fs = require('fs'); for (const n of fs.readdirSync('/proc/self/fd')) { try { console.log(' ' + n + ' -> ' + fs.readlinkSync('/proc/self/fd/' + n)); } catch {} }";
const child = (how) => new Promise((resolve) => {
  const argv = how === 'node' ? [process.execPath, '-e', NODE_LIST] : how === 'shell' ? ['/bin/sh', '-c', 'ls -l /proc/self/fd'] : ['ls', '-l', '/proc/self/fd'];
  const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  p.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  p.on('error', (e) => resolve({ from: 'main-' + how, status: -1, stdout, error: String(e) }));
  p.on('close', (status) => resolve({ from: 'main-' + how, status, stdout }));
});

const t0 = performance.now();
const phases = {};
const phase = (name) => { phases[name] = Math.round(performance.now() - t0); };
// Warm-up: the creators' first iterations (what a process opens once belongs to the baseline).
{
  const c = worker(${JSON.stringify(creator)}, creatorData(40));
  await c.exited;
  if (c.errors.length) { out({ type: 'result', failed: 'warm-up', errors: c.errors }); process.exit(1); }
}
const base = snap();
phase('warm');
// What a child holds when nothing is being created: its stdio, and ls's own /proc directory.
const isOwnDir = (link) => /^\\/proc\\/\\d+\\/fd$/.test(link);
const plain = listing(spawnSync('ls', ['-l', '/proc/self/fd'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).stdout);
const stdio = new Set(plain.filter(([, l]) => !isOwnDir(l)).map(([fd]) => fd));
const nodeBase = ${nodeChildren(kvm)} > 0 ? listing((await child('node')).stdout).map(([, l]) => l) : [];

const creators = Array.from({ length: ${CREATORS} }, () => worker(${JSON.stringify(creator)}, creatorData(${CREATOR_MAX})));
await Promise.race([Promise.all(creators.map((c) => c.started)), Promise.all(creators.map((c) => c.exited))]);
const spawner = worker(${JSON.stringify(spawner)}, { count: ${SPAWNER_CHILDREN} });
const mains = [];
for (let i = 0; i < ${MAIN_CHILDREN}; i++) {
  const how = i < ${nodeChildren(kvm)} ? 'node' : pick(['ls', 'shell']);
  mains.push(await child(how));
}
phase('main');
const spawned = await spawner.done;
phase('spawner');
Atomics.store(new Int32Array(stop), 0, 1);
const made = await Promise.all(creators.map((c) => c.done));
await Promise.all([spawner, ...creators].map((c) => c.exited));
phase('creators');
const errors = [spawner, ...creators].flatMap((c) => c.errors);

// Every child: exit status 0, nothing beyond its stdio (a Node child: nothing beyond what a Node
// child spawned at rest holds), and never a KVM object.
const listings = [...spawned.listings, ...made.flatMap((m) => m.listings), ...mains];
const bad = [];
for (const l of listings) {
  if (l.status !== 0) { bad.push({ from: l.from, status: l.status, error: l.error }); continue; }
  const entries = listing(l.stdout);
  if (entries.length < stdio.size) bad.push({ from: l.from, unreadable: l.stdout.slice(0, 200) });
  // A Node child's own files under /proc (it reads its maps at start) are not inherited.
  const extra = l.from === 'main-node'
    ? newLinks(nodeBase, entries.map(([, x]) => x)).filter((x) => !x.startsWith('/proc/'))
    : entries.filter(([fd, link]) => !isOwnDir(link) && !stdio.has(fd)).map(([fd, link]) => fd + ' -> ' + link);
  const kvm = entries.filter(([, link]) => isKvmLink(link)).map(([fd, link]) => fd + ' -> ' + link);
  if (extra.length || kvm.length) bad.push({ from: l.from, extra, kvm });
}
const now = snap();
const ops = {};
for (const m of made) for (const [k, v] of Object.entries(m.ops)) ops[k] = (ops[k] ?? 0) + v;
out({
  type: 'result', phases, bad: bad.slice(0, 20), badCount: bad.length, errors, ops,
  children: { spawner: spawned.listings.length, creators: made.reduce((a, m) => a + m.spawned, 0), main: mains.length },
  left: { fds: now.fds - base.fds, extra: newLinks(base.links, now.links), kvm: now.kvm, maps: now.maps },
});
`;
}

interface Result {
  phases: Record<string, number>;
  bad: unknown[];
  badCount: number;
  errors: unknown[];
  ops: Record<string, number>;
  children: { spawner: number; creators: number; main: number };
  left: { fds: number; extra: string[]; kvm: string[]; maps: string[] };
}

async function run(ctx: TestContext, name: string, kvm: boolean): Promise<void> {
  const seed = seedOf(name);
  await ctx.annotate(`seed ${seed}`);
  const c = await runNode(source(seed, kvm), { timeoutMs: 120_000 });
  expectEnded(c, seed);
  const r = result<Result>(c);
  const ops = Object.values(r.ops).reduce((a, b) => a + b, 0);
  console.log(`[reliability] ${name} phases (ms from start): ${JSON.stringify(r.phases)}`);
  summary(name, { childrenFromSpawner: r.children.spawner, childrenFromCreators: r.children.creators, childrenFromMain: r.children.main, fdOperations: ops }, c.ms);
  expect(r.errors, `seed ${seed}`).toEqual([]);
  expect(r.children.spawner).toBe(SPAWNER_CHILDREN);
  expect(r.children.main).toBe(MAIN_CHILDREN);
  // The creators were at work while the children were spawned.
  expect(ops, `seed ${seed}: ${JSON.stringify(r.ops)}`).toBeGreaterThan(CREATORS);
  expect({ badCount: r.badCount, bad: r.bad }, `seed ${seed}: children that held more than their stdio`).toEqual({ badCount: 0, bad: [] });
  expect(r.left, `seed ${seed}: what the process holds afterwards, beyond its baseline`).toEqual({ fds: 0, extra: [], kvm: [], maps: [] });
}

describe('children spawned while fds are created', () => {
  it(`never inherit a socket, memfd or other fd of the library (${SPAWNER_CHILDREN} + ${MAIN_CHILDREN} children and the creators' own)`, async (ctx) => {
    await run(ctx, 'spawn-plain', false);
  }, hangBound(150_000));

  it(`never inherit a guest_memfd, VM, vCPU or /dev/kvm either (${SPAWNER_CHILDREN} + ${MAIN_CHILDREN} children and the creators' own)`, async (ctx) => {
    openKvm(ctx).close();
    await run(ctx, 'spawn-kvm', true);
  }, hangBound(150_000));
});
