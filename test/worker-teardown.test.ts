// A Worker that ends without closing what it made, or while it is blocked in a synchronous call,
// must not leak or hang the process (issue 11): its environment's teardown releases the fds and
// mappings its objects own and stops its blocking calls. Each scenario runs in a child Node
// process (the built package, dist/) with a timeout, so that a hang fails the test instead of
// hanging the run.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { guestSetupSource } from './guest-vm.js';
import { openKvm } from './kvm-host.js';

const root = fileURLToPath(new URL('..', import.meta.url));
// One module of the built package: workers import only what they use (loading all of it takes
// seconds per worker in an emulated VM).
const lib = (name: string) => JSON.stringify(`${root}dist/${name}.js`);
const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-teardown-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
// One worker per way a worker ends (returns, process.exit(), terminate(), throws), each with a
// guest_memfd of GMEM_SIZE: sized for the test to take well under 30 s in an emulated VM.
const ENDINGS = ['return', 'exit', 'terminate', 'throw'];
const WORKERS = ENDINGS.length;
const GMEM_SIZE = 32 * MiB;
/** How long terminate() may take, and the process to exit after it. */
const SETTLE_MS = 10_000;

interface Child {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Writes the worker module `name` and runs `main` (a module body) in a child, killed after timeoutMs. */
function run(worker: string, main: string, timeoutMs: number): Child {
  if (!existsSync(join(root, 'dist', 'index.js'))) throw new Error('dist/ is not built: run `npm run build` first');
  const file = join(dir, `worker-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, worker);
  const script = `
    import { Worker } from 'node:worker_threads';
    import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
    const WORKER = ${JSON.stringify(file)};
    const links = () => readdirSync('/proc/self/fd').map((n) => { try { return readlinkSync('/proc/self/fd/' + n); } catch { return ''; } });
    const fds = () => links().filter((l) => l !== '').length;
    const kvmFds = () => links().filter((l) => /kvm/.test(l));
    const gmemMaps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => /kvm-gmem/.test(l)).length;
    const rssKiB = () => Number(/^Rss:\\s+(\\d+) kB$/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))[1]);
    const out = (v) => process.stdout.write(JSON.stringify(v) + '\\n');
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const start = (data) => {
      const w = new Worker(WORKER, { workerData: data, execArgv: [] });
      w.on('error', (e) => { if (e.message !== 'boom') console.error(e); });
      return { w, ready: new Promise((r) => w.once('message', r)), exited: new Promise((r) => w.once('exit', r)) };
    };
    ${main}
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** The last JSON line the child printed. */
function last(c: Child): Record<string, unknown> {
  const lines = c.stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  if (lines.length === 0) throw new Error(`the child printed nothing (status ${c.status}, signal ${c.signal}): ${c.stderr}`);
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

// A worker that boots the spin guest on vCPU 0 (4 MiB of guest memory) before doing `then`.
const guestWorker = (then: string) => `
  ${guestSetupSource()}
  import { parentPort, workerData } from 'node:worker_threads';
  boot('spin', [0x100000]);
  ${then}
`;

describe('a Worker that ends without closing', () => {
  it(`releases every fd and mapping it made (${WORKERS} workers, a ${GMEM_SIZE / MiB} MiB guest_memfd each)`, (ctx) => {
    openKvm(ctx).close(); // skips (or fails under KVM_GMEM_REQUIRE_KVM) without a usable /dev/kvm
    // Each worker: /dev/kvm, a VM, a guest_memfd mapped and populated, a memslot, a vCPU and a
    // socket pair, none closed. Then it ends in one of four ways; `close` (the warm-up) closes
    // everything, so that what Node and the library open once per process is in the baseline.
    const worker = `
      import { Kvm } from ${lib('kvm/kvm')};
      import { FdChannel } from ${lib('ipc/index')};
      import { GuestMemfdFlag, Madvise } from ${lib('core/constants')};
      import { parentPort, workerData } from 'node:worker_threads';
      const how = workerData;
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      const gmem = vm.createGuestMemfd({ size: ${GMEM_SIZE}, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
      const map = gmem.map();
      map.advise(Madvise.POPULATE_WRITE); // every page allocated and mapped, without a fault per page
      map.bytes[0] = 1;
      vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: ${GMEM_SIZE}, userspaceAddr: map, guestMemfd: gmem });
      const vcpu = vm.createVcpu(0);
      const [a, b] = FdChannel.pair();
      // A receive in flight (its fd watch thread waiting) where it cannot keep the worker alive.
      if (how !== 'return' && how !== 'close') a.receive().catch(() => {});
      if (how === 'close') for (const o of [a, b, vcpu, map, gmem, vm, kvm]) o.close();
      parentPort.postMessage('ready');
      parentPort.once('message', () => {
        if (how === 'exit') process.exit(3);
        if (how === 'throw') throw new Error('boom');
        parentPort.close(); // 'return', 'close': nothing left to do, the worker ends
      });
    `;
    const main = `
      const measure = () => ({ fds: fds(), kvm: kvmFds(), maps: gmemMaps(), rss: rssKiB() });
      const t0 = Date.now();
      const phase = (name) => console.log(name, Date.now() - t0, 'ms');
      const warm = start('close');
      await warm.ready;
      warm.w.postMessage('go');
      await warm.exited;
      phase('warm-up');
      const base = measure();
      const ws = ${JSON.stringify(ENDINGS)}.map((how) => ({ how, ...start(how) }));
      await Promise.all(ws.map((w) => w.ready));
      const during = measure();
      phase('ready');
      for (const w of ws) {
        if (w.how === 'terminate') w.w.terminate();
        else w.w.postMessage('go');
      }
      await Promise.all(ws.map((w) => w.exited));
      phase('ended');
      out({ base, during, after: measure() });
    `;
    const c = run(worker, main, 50_000);
    expect(c.signal, `the child hung (killed after 50 s): ${c.stdout}`).toBeNull();
    expect(c.stderr).toBe('');
    expect(c.status).toBe(0);
    const { base, during, after } = last(c) as Record<'base' | 'during' | 'after', { fds: number; kvm: string[]; maps: number; rss: number }>;
    // The workers' objects were there: at least kvm, VM, guest_memfd, vCPU and two sockets each,
    // and the guest memory mapped and resident.
    expect(during.fds - base.fds).toBeGreaterThanOrEqual(6 * WORKERS);
    expect(during.maps).toBe(WORKERS);
    expect(during.rss - base.rss).toBeGreaterThanOrEqual((WORKERS * GMEM_SIZE) / 1024);
    // And all of it is gone once they ended: not one fd left, no mapping, and less than one
    // guest_memfd's worth of resident memory. With no fd and no mapping left, nothing in the
    // process holds a guest_memfd, so the kernel has freed their memory as well.
    expect(after.kvm).toEqual([]);
    expect(after.fds).toBe(base.fds);
    expect(after.maps).toBe(0);
    expect(after.rss - base.rss).toBeLessThan(GMEM_SIZE / 1024);
  });
});

describe('a Worker that ends with a received message unread', () => {
  it('closes the fds the message still holds (4 memfds), however the worker ends', () => {
    const worker = `
      import { FdChannel } from ${lib('ipc/index')};
      import { native } from ${lib('core/native')};
      import { parentPort, workerData } from 'node:worker_threads';
      const [a, b] = FdChannel.pair();
      const sent = [0, 1, 2, 3].map((i) => native.memfdCreate('teardown-' + i));
      native.sendMsg(a.fd, new TextEncoder().encode('{"unread":true}'), sent, 1000); // the raw wire
      for (const fd of sent) native.close(fd);
      const msg = await b.receive({ timeoutMs: 5000 });
      a.close();
      b.close();
      globalThis.keep = msg; // neither disposed nor collectable
      parentPort.postMessage(msg.fds.length);
      parentPort.once('message', () => {
        if (workerData === 'exit') process.exit(3);
        parentPort.close();
      });
    `;
    const main = `
      await new Promise((r) => new Worker('', { eval: true }).once('exit', r));
      const base = fds();
      const counts = [];
      for (const how of ['return', 'exit', 'terminate']) {
        const w = start(how);
        const held = await w.ready;
        const during = fds() - base;
        if (how === 'terminate') await w.w.terminate(); else w.w.postMessage('go');
        await w.exited;
        counts.push({ how, held, during, left: fds() - base });
      }
      out(counts);
    `;
    const c = run(worker, main, 50_000);
    expect(c.signal, `the child hung (killed after 50 s): ${c.stdout}`).toBeNull();
    expect(c.stderr).toBe('');
    const counts = JSON.parse(c.stdout.trim().split('\n').filter((l) => l.startsWith('['))[0]!) as { held: number; during: number; left: number }[];
    for (const r of counts) {
      expect(r.held).toBe(4);
      expect(r.during).toBeGreaterThanOrEqual(4);
      expect(r).toMatchObject({ left: 0 }); // before: the 4 memfds stayed open
    }
  });
});

describe('a Worker blocked in a synchronous call', () => {
  // Worker 1 is terminated while blocked: terminate() must settle within SETTLE_MS, and its fds
  // be closed. Worker 2 is left blocked and the process exits: process.exit() terminates every
  // worker, so it must not hang either.
  const main = `
    // What Node opens once for its first worker (/dev/null) belongs in the baseline.
    await new Promise((r) => new Worker('', { eval: true }).once('exit', r));
    const base = fds();
    const one = start(1);
    await one.ready;
    let returned = false; // the blocking call came back: it must not, the peer never gives way
    one.w.on('message', (m) => { if (m === 'returned') returned = true; });
    await sleep(500); // well inside the blocking call (a run there is kicked every 100 ms meanwhile)
    const t0 = Date.now();
    const settled = await Promise.race([one.w.terminate().then(() => true), sleep(${SETTLE_MS}).then(() => false)]);
    const ms = Date.now() - t0;
    if (!settled) {
      out({ settled, ms, returned });
      process.exit(7); // hangs as well, if the worker cannot be stopped
    }
    await one.exited;
    const left = fds() - base;
    const two = start(2);
    await two.ready;
    await sleep(300);
    out({ settled, ms, left, returned });
    process.exit(7);
  `;

  it('vcpu.run() on a guest that never exits: terminate() settles and process.exit() works', (ctx) => {
    openKvm(ctx).close();
    const c = run(guestWorker(`parentPort.postMessage('running'); vcpu.run(); parentPort.postMessage('returned');`), main, 50_000);
    expect(c.signal, `the child hung (killed after 50 s): ${c.stdout}`).toBeNull();
    expect(c.stderr).toBe('');
    expect(last(c)).toMatchObject({ settled: true, left: 0, returned: false });
    expect(last(c).ms as number).toBeLessThan(SETTLE_MS);
    expect(c.status).toBe(7);
  });

  it('channel.send() with timeoutMs: Infinity to a peer that never reads: terminate() settles and process.exit() works', () => {
    const worker = `
      import { FdChannel } from ${lib('ipc/index')};
      import { parentPort } from 'node:worker_threads';
      const [a, b] = FdChannel.pair();
      // Fill the peer's receive queue (b never reads), then wait for room that never comes.
      let sent = 0;
      try { for (;;) { a.send('x'.repeat(1000), [], { timeoutMs: 0 }); sent++; } } catch (e) { if (e.code !== 'ERR_KVM_TIMEOUT') throw e; }
      parentPort.postMessage(sent);
      a.send('one more', [], { timeoutMs: Infinity });
      parentPort.postMessage('returned');
    `;
    const c = run(worker, main, 50_000);
    expect(c.signal, `the child hung (killed after 50 s): ${c.stdout}`).toBeNull();
    expect(c.stderr).toBe('');
    expect(last(c)).toMatchObject({ settled: true, left: 0, returned: false });
    expect(last(c).ms as number).toBeLessThan(SETTLE_MS);
    expect(c.status).toBe(7);
  });
});
