// runAsync(): KVM_RUN on a native thread of the vCPU's own while the event loop goes on; kick()
// and AbortSignal stop it; two vCPUs run at the same time; KVM_RUN's errors reject the promise;
// a running vCPU refuses other calls instead of blocking; the process exits when it should.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvmError, KvmStateError, RunLayout, type Vcpu } from '../lib/index.js';
import { runUntilUcall } from '../lib/guest/index.js';
import { DATA, guestSetupSource, guestVm } from './guest-vm.js';
import { openKvm, thrown, hangBound } from './kvm-host.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The spin guest's counter, read by the host while the guest runs. */
function counter(mem: Uint8Array, at: number): bigint {
  return new DataView(mem.buffer, mem.byteOffset).getBigUint64(at, true);
}

/** Waits until the guest's counter moves (the vCPU thread is in the guest), or fails after 10 s. */
async function untilCounting(mem: Uint8Array, at: number): Promise<void> {
  const start = counter(mem, at);
  for (let i = 0; i < 1000 && counter(mem, at) === start; i++) await sleep(10);
  expect(counter(mem, at), 'the guest never started counting').not.toBe(start);
}

describe('vcpu.runAsync', () => {
  it('keeps timers firing while a guest spins, and kick() stops the guest with an intr exit', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'spin', [DATA]);
    expect(vcpu.kick()).toBe(false); // nothing in flight: nothing to stop
    const run = vcpu.runAsync();
    expect(vcpu.running).toBe(true);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    await untilCounting(g.mem, DATA);
    const before = counter(g.mem, DATA);
    await sleep(100);
    clearInterval(timer);
    expect(ticks).toBeGreaterThanOrEqual(3); // the event loop ran while the guest did
    expect(counter(g.mem, DATA)).toBeGreaterThan(before); // and the guest ran while JavaScript did
    expect(vcpu.kick()).toBe(true);
    expect(await run).toMatchObject({ reason: 'intr' });
    expect(vcpu.running).toBe(false);
    // Stopped: the counter stays put. Resumed: it goes on from where it was.
    const stopped = counter(g.mem, DATA);
    await sleep(30);
    expect(counter(g.mem, DATA)).toBe(stopped);
    const again = vcpu.runAsync();
    await untilCounting(g.mem, DATA);
    expect(counter(g.mem, DATA)).toBeGreaterThan(stopped);
    vcpu.kick();
    expect((await again).reason).toBe('intr');
  });

  it('stops when its AbortSignal aborts, rejecting with an AbortError; an aborted signal never runs', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'spin', [DATA]);
    const ac = new AbortController();
    const run = vcpu.runAsync({ signal: ac.signal });
    await untilCounting(g.mem, DATA);
    ac.abort();
    const e = await run.catch((x: unknown) => x);
    expect((e as Error).name).toBe('AbortError');
    expect(vcpu.running).toBe(false);
    const stopped = counter(g.mem, DATA);
    await expect(vcpu.runAsync({ signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    await sleep(20);
    expect(counter(g.mem, DATA)).toBe(stopped);
    expect(() => vcpu.runAsync({ signal: 'x' as never })).toThrow(TypeError);
    // Something that passes for an AbortSignal but cannot take a listener: nothing starts.
    const fake = Object.create(AbortSignal.prototype, { aborted: { value: false } }) as AbortSignal;
    expect(() => vcpu.runAsync({ signal: fake })).toThrow(TypeError);
    expect(vcpu.running).toBe(false);
    expect(vcpu.getRegs().rdi).toBe(BigInt(DATA));
  });

  it('runs two vCPUs at the same time on two threads of their own (a rendezvous only both can finish)', async (ctx) => {
    using g = guestVm(ctx);
    const a = g.boot(0, 'rendezvous', [DATA, DATA + 8]);
    const b = g.boot(1, 'rendezvous', [DATA + 8, DATA]);
    // Each guest sets its flag and waits for the other's: run one after the other, neither ends.
    const guard = setTimeout(() => { a.kick(); b.kick(); }, 20_000);
    const [ua, ub] = await Promise.all([runUntilUcall(a), runUntilUcall(b)]).finally(() => clearTimeout(guard));
    expect([ua.cmd, ub.cmd]).toEqual(['done', 'done']);
    expect(a.threadId).toBeTypeOf('number');
    expect(b.threadId).toBeTypeOf('number');
    expect(a.threadId).not.toBe(b.threadId);
    expect(a.threadId).not.toBe(process.pid);
    expect(existsSync(`/proc/self/task/${a.threadId}`)).toBe(true);
    expect(existsSync(`/proc/self/task/${b.threadId}`)).toBe(true);
  });

  it('keeps one thread per vCPU for its whole life', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'port_loop', [50]);
    expect(vcpu.threadId).toBeUndefined();
    const tids = new Set<number | undefined>();
    for (let i = 0; i < 50; i++) {
      expect((await vcpu.runAsync()).reason).toBe('io');
      tids.add(vcpu.threadId);
    }
    expect(tids.size).toBe(1);
    vcpu.close();
    await sleep(10);
    expect(existsSync(`/proc/self/task/${[...tids][0]}`)).toBe(false); // the thread ended with the vCPU
  });

  it('rejects with a KvmError when KVM_RUN fails (invalid kvm_run.kvm_valid_regs: EINVAL), and run() throws it', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'halt');
    const run = new DataView(vcpu.kvmRun.buffer);
    run.setBigUint64(RunLayout.kvm_valid_regs, 1n << 31n, true); // no such register set
    const e = await vcpu.runAsync().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(KvmError);
    expect(e).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'ioctl', request: 'KVM_RUN' });
    expect(thrown(() => vcpu.run())).toMatchObject({ code: 'EINVAL', request: 'KVM_RUN' });
    run.setBigUint64(RunLayout.kvm_valid_regs, 0n, true);
    expect((await vcpu.runAsync()).reason).toBe('hlt');
  });

  it('refuses every other call while a run is in flight (ERR_KVM_VCPU_RUNNING), and accepts them after', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu: Vcpu = g.boot(0, 'spin', [DATA]);
    const run = vcpu.runAsync();
    for (const f of [() => vcpu.getRegs(), () => vcpu.setRegs(vcpu.getRegs()), () => vcpu.getSregs(), () => vcpu.getFpu(),
      () => vcpu.run(), () => vcpu.runAsync(), () => vcpu.kvmRun]) {
      const e = thrown(f);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_VCPU_RUNNING');
    }
    vcpu.kick();
    await run;
    expect(vcpu.getRegs().rdi).toBe(BigInt(DATA));
  });

  it('close() during a run stops the guest and rejects the run with ERR_KVM_CLOSED', async (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'spin', [DATA]);
    const run = vcpu.runAsync();
    await untilCounting(g.mem, DATA);
    vcpu.close();
    await expect(run).rejects.toMatchObject({ name: 'KvmStateError', code: 'ERR_KVM_CLOSED' });
    const stopped = counter(g.mem, DATA);
    await sleep(20);
    expect(counter(g.mem, DATA)).toBe(stopped);
    expect(thrown(() => vcpu.runAsync())).toMatchObject({ code: 'ERR_KVM_CLOSED' });
    expect(vcpu.kick()).toBe(false);
  });
});

describe('the process and vCPU threads', () => {
  function child(body: string): { status: number | null; stdout: string; stderr: string; ms: number } {
    const script = `
      ${guestSetupSource()}
      ${body}
    `;
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: hangBound(20_000) });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
  }

  it('exits on its own once no run is in flight (an idle vCPU thread does not hold the event loop)', (ctx) => {
    openKvm(ctx).close();
    const r = child(`boot('port_loop', [3]); for (let i = 0; i < 4; i++) await vcpu.runAsync(); console.log('ran');`);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('ran');
    expect(r.status).toBe(0);
  });

  it('exits promptly with process.exit() while a guest spins in runAsync', (ctx) => {
    openKvm(ctx).close();
    const r = child(`boot('spin', [0x100000]); vcpu.runAsync(); setTimeout(() => { console.log('exiting'); process.exit(7); }, 50);`);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('exiting');
    expect(r.status).toBe(7);
  });

  it('survives a worker that ends while its vCPU spins in runAsync (thrown, terminated, process.exit)', (ctx) => {
    openKvm(ctx).close();
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-worker-'));
    const worker = join(dir, 'worker.mjs');
    writeFileSync(worker, `
      ${guestSetupSource()}
      import { parentPort, workerData } from 'node:worker_threads';
      boot('spin', [0x100000]);
      vcpu.runAsync();
      parentPort.postMessage('running');
      setTimeout(() => { if (workerData === 'throw') throw new Error('boom'); if (workerData === 'exit') process.exit(3); }, 20);
    `);
    const script = `
      import { Worker } from 'node:worker_threads';
      let running = 0;
      for (const how of ['throw', 'exit', 'terminate', 'throw', 'terminate']) {
        const w = new Worker(${JSON.stringify(worker)}, { workerData: how, execArgv: [] });
        w.on('message', (m) => { if (m === 'running') { running++; if (how === 'terminate') w.terminate(); } });
        w.on('error', (e) => { if (e.message !== 'boom') console.error(e); });
        await new Promise((r) => w.once('exit', r));
      }
      console.log('survived', running);
    `;
    try {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: hangBound(30_000) });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('survived 5');
      expect(r.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stays alive while a run is in flight, like pending I/O', (ctx) => {
    openKvm(ctx).close();
    const r = child(`boot('spin', [0x100000]);
      const t0 = Date.now();
      vcpu.runAsync().then((e) => console.log(e.reason, Date.now() - t0 >= 200));
      setTimeout(() => vcpu.kick(), 200).unref();`);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('intr true');
    expect(r.status).toBe(0);
  });
});
