/**
 * Worker modules of the spawn scenario: creators that make and close every kind of fd the library
 * creates or receives, as fast as they can, and sometimes spawn a child while holding them; and
 * a spawner that only spawns children. Every child lists its own fd table (`ls -l /proc/self/fd`),
 * and the lines are parsed with {@link PARSE_LISTING} in the parent.
 */
import { dist } from './harness.js';

/** JavaScript: `listing(text)` -> [[fd, link], ...] from `ls -l /proc/self/fd` output. */
export const PARSE_LISTING = `
const listing = (text) => text.split('\\n').map((l) => / (\\d+) -> (.*)$/.exec(l)).filter(Boolean).map((m) => [Number(m[1]), m[2]]);
`;

/** Operations a creator picks from (the KVM ones only with `kvm`). */
export const PLAIN_OPS = ['pair', 'sendReceive', 'listenConnect', 'dupChannel', 'memfd', 'watch'] as const;
export const KVM_OPS = ['gmem', 'vmVcpu', 'sendGmem', 'kvmOpen'] as const;

/** workerData: { seed, kvm, stop (SharedArrayBuffer: [stop flag]), max, spawnEvery, dir }. Posts { ops, spawned, listings }. */
export function creatorWorker(): string {
  return `
import { parentPort, workerData, threadId } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
const { FdChannel } = await import(${dist('ipc/index')});
const { native } = await import(${dist('core/native')});
const { seed, kvm: withKvm, stop, max, spawnEvery, dir } = workerData;
const flag = new Int32Array(stop);
let s = (seed + threadId * 7919) >>> 0;
const rand = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
let Kvm, GuestMemfd, kvm, vm;
if (withKvm) {
  ({ Kvm } = await import(${dist('kvm/kvm')}));
  ({ GuestMemfd } = await import(${dist('kvm/guest-memfd')}));
  kvm = Kvm.open();
  vm = kvm.createVm();
}
const ops = {};
const listings = [];
let spawned = 0;
// A child spawned from this thread while \`held\` is open: it lists its own fd table.
const maybeSpawn = () => {
  if (rand() * spawnEvery >= 1) return;
  const r = spawnSync('ls', ['-l', '/proc/self/fd'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  spawned++;
  listings.push({ from: 'creator', status: r.status, stdout: r.stdout, error: r.error ? String(r.error) : undefined });
};
const run = {
  pair() { const [a, b] = FdChannel.pair(); maybeSpawn(); a.close(); b.close(); },
  async sendReceive() {
    const [a, b] = FdChannel.pair();
    const m0 = native.memfdCreate('rel');
    a.send(1, [m0, a]);
    native.close(m0);
    const m = await b.receive();
    maybeSpawn();
    m[Symbol.dispose]();
    a.close(); b.close();
  },
  async listenConnect() {
    const path = join(dir, 'c' + threadId + '-' + Math.floor(rand() * 1e9));
    const l = FdChannel.listen(path);
    const c = await FdChannel.connect(path);
    const d = await l.accept();
    maybeSpawn();
    d.close(); c.close(); l.close();
  },
  dupChannel() { const [a, b] = FdChannel.pair(); const a2 = FdChannel.fromFd(a.fd, { dup: true }); maybeSpawn(); a2.close(); a.close(); b.close(); },
  memfd() { const m = native.memfdCreate('rel'); maybeSpawn(); native.close(m); },
  // A receive that waits: its fd watch thread, a dup of the socket and an eventfd.
  async watch() { const [a, b] = FdChannel.pair(); await a.receive({ timeoutMs: 20 }).catch(() => {}); maybeSpawn(); a.close(); b.close(); },
  gmem() { const g = vm.createGuestMemfd({ size: 1 << 20, flags: BigInt(Math.floor(rand() * 4)) }); maybeSpawn(); g.close(); },
  vmVcpu() { const v = kvm.createVm(); const c = v.createVcpu(0); maybeSpawn(); c.close(); v.close(); },
  async sendGmem() {
    const g = vm.createGuestMemfd({ size: 1 << 20, flags: 3n });
    const [a, b] = FdChannel.pair();
    a.send(null, [g, vm]);
    const m = await b.receive();
    const got = GuestMemfd.adopt(m.fds[0], { size: 1 << 20, flags: 3n });
    maybeSpawn();
    got.close(); m[Symbol.dispose](); g.close(); a.close(); b.close();
  },
  kvmOpen() { const k = Kvm.open(); maybeSpawn(); k.close(); },
};
const names = Object.keys(run).filter((n) => withKvm || !${JSON.stringify(KVM_OPS)}.includes(n));
parentPort.postMessage({ started: true }); // the spawners begin once creation does
let i = 0;
for (; i < max && Atomics.load(flag, 0) === 0; i++) {
  const name = names[Math.floor(rand() * names.length)];
  await run[name]();
  ops[name] = (ops[name] ?? 0) + 1;
}
vm?.close();
kvm?.close();
parentPort.postMessage({ ops, spawned, listings });
`;
}

/** workerData: { count }. Spawns `count` children one after the other; posts { listings }. */
export function spawnerWorker(): string {
  return `
import { parentPort, workerData } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
const listings = [];
for (let i = 0; i < workerData.count; i++) {
  // Half straight from this thread, half through a shell that execs ls.
  const r = i % 2 === 0
    ? spawnSync('ls', ['-l', '/proc/self/fd'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    : spawnSync('/bin/sh', ['-c', 'exec ls -l /proc/self/fd'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  listings.push({ from: 'spawner', status: r.status, stdout: r.stdout, error: r.error ? String(r.error) : undefined });
}
parentPort.postMessage({ listings });
`;
}
