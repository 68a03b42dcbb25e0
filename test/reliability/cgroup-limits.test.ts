// Thread and memory exhaustion (issue 11): a child Node process in a cgroup of its own lowers its
// pids limit to what it already runs (no thread can start) or its memory limit to 16 MiB above
// what it uses, then drives the calls that start threads (a receive's or accept's wait thread,
// a vCPU's run thread, guest_memfd creation's short-lived thread) or take memory (populating an
// anonymous or guest_memfd mapping, fallocate). Each must fail without crashing, hanging or
// keeping an fd, and work again once the limit is lifted. The error types of the wait and run
// threads are regressions.test.ts's; here they must at least be Errors.
import { describe, expect, it, type TestContext } from 'vitest';
import { hangBound, openKvm } from '../kvm-host.js';
import { CHILD_LIMITS, cgroupOrSkip, type Controller } from './cgroup.js';
import { dist, expectEnded, prelude, printRefusals, result, runNode, scaled, scratch, seedOf, summary } from './harness.js';

/** Tries of each call while the limit holds. */
const TRIES = scaled(4);
const MiB = 1 << 20;
/** What the memory calls ask for, against a limit HEADROOM above the child's use (and what must fit). */
const HEADROOM = 16 * MiB;
const BIG = 64 * MiB;
const SMALL = 4 * MiB;

/** The calls of one scenario: name -> async () => void, in the child's source. */
function child(seed: number, kvm: boolean, limit: { once: string; each: string }, calls: string, tries = TRIES): string {
  return `${prelude(seed)}
${CHILD_LIMITS}
import { readFile } from 'node:fs/promises';
import { FdChannel } from ${dist('ipc/index')};
import { KvmError, KvmStateError } from ${dist('core/errors')};
import { Mapping } from ${dist('memory/mapping')};
${kvm ? `import { Kvm } from ${dist('kvm/kvm')}; import { bootGuest } from ${dist('guest/boot')}; import { guestImage } from ${dist('guest/images')};` : ''}
const typed = (e) => (e instanceof KvmStateError && /^ERR_KVM_/.test(e.code)) || (e instanceof KvmError && /^E[A-Z0-9]+$/.test(e.code));
const timeout = (e) => { if (e?.code !== 'ERR_KVM_TIMEOUT') throw e; };
await readFile('/proc/self/stat'); // libuv's pool is started: its threads belong to the baseline
let kvmFd, vm, gmem, map, nextId = 0;
if (${kvm}) {
  kvmFd = Kvm.open();
  vm = kvmFd.createVm();
  gmem = vm.createGuestMemfd({ size: 4 << 20, flags: 3n });
  map = gmem.map();
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: map, guestMemfd: gmem });
}
const newVcpu = () => {
  const v = vm.createVcpu(nextId++);
  bootGuest(v, { image: guestImage('port_loop'), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000, args: [1000] });
  return v;
};
const calls = {
${calls}
};
const names = Object.keys(calls).filter((n) => ${kvm} || !n.startsWith('kvm'));
const attempt = async (name) => {
  const t0 = performance.now();
  try { await calls[name](); return { name, ok: true }; }
  catch (e) { return { name, ok: false, typed: typed(e), isError: e instanceof Error, error: describeError(e), ms: Math.round(performance.now() - t0) }; }
};
for (const n of names) { const r = await attempt(n); if (!r.ok) { out({ type: 'result', failed: 'warm-up', r }); process.exit(1); } }
const base = snap();
${limit.once}
const tries = [];
for (let i = 0; i < ${tries}; i++) {
  for (const n of names) {
    ${limit.each}
    const r = await attempt(n);
    const now = snap();
    tries.push({ ...r, left: now.fds - base.fds, extra: newLinks(base.links, now.links) });
  }
}
setLimit('max');
const after = [];
for (const n of names) after.push(await attempt(n));
const now = snap();
// Then none of the library's KVM fds or mappings may be left at all.
for (const o of [map, gmem, vm, kvmFd]) o?.close();
const closed = snap();
out({ type: 'result', tries, after, left: { fds: now.fds - base.fds, extra: newLinks(base.links, now.links), kvm: closed.kvm, maps: closed.maps } });
`;
}

interface Try {
  name: string;
  ok: boolean;
  typed?: boolean;
  isError?: boolean;
  error?: { ctor: string; code?: string; syscall?: string; message: string };
  left: number;
  extra: string[];
}

async function run(ctx: TestContext, name: string, controller: Controller, kvm: boolean, source: (seed: number) => string) {
  const cg = cgroupOrSkip(ctx, controller);
  const seed = seedOf(name);
  await ctx.annotate(`seed ${seed}, cgroup v${cg.version} ${cg.dir}`);
  const rescuer = controller === 'memory' ? cg.rescueFaults() : undefined;
  try {
    const c = await runNode(source(seed), { timeoutMs: 90_000, wrapper: cg.wrapper, env: cg.env });
    const rescues = rescuer?.stop() ?? 0;
    expectEnded(c, seed);
    const r = result<{ tries: Try[]; after: Try[]; left: unknown; failed?: string }>(c);
    expect(r.failed, JSON.stringify(r)).toBeUndefined();
    const refused = r.tries.filter((t) => !t.ok);
    summary(name, { calls: r.tries.length, afterwards: r.after.length }, c.ms);
    printRefusals(`${name} (cgroup v${cg.version})`, refused.map((t) => ({ op: t.name, error: t.error })),
      rescuer ? `; the OOM handler raised the limit ${rescues} times` : '');
    return r;
  } finally {
    rescuer?.stop();
    cg.remove();
  }
}

describe('thread exhaustion (a pids cgroup at its limit)', () => {
  // Each call needs one new thread; none can start while the limit holds. The waits are long
  // enough to start theirs (a deadline past before the wait begins needs no thread).
  const calls = `
  async receiveWait() { const [a, b] = FdChannel.pair(); try { await a.receive({ timeoutMs: ${hangBound(50)} }).catch(timeout); } finally { a.close(); b.close(); } },
  async acceptWait() { const l = FdChannel.listen(${JSON.stringify(scratch())} + '/pids-' + process.pid); try { await l.accept({ timeoutMs: ${hangBound(50)} }).catch(timeout); } finally { l.close(); } },
  async kvmCreateGuestMemfd() { vm.createGuestMemfd({ size: 1 << 20 }).close(); },
  async kvmRunAsync() { const v = newVcpu(); try { const e = await v.runAsync(); if (e.reason !== 'io') throw new Error('exit ' + e.reason); } finally { v.close(); } },
`;
  const limit = { once: 'setLimit(usage());', each: '' };

  async function check(ctx: TestContext, name: string, kvm: boolean) {
    const r = await run(ctx, name, 'pids', kvm, (seed) => child(seed, kvm, limit, calls));
    // No call got its thread; each failed with an Error and kept nothing; all work after.
    expect(r.tries.filter((t) => t.ok || !t.isError || t.left !== 0), 'calls that ran, failed with a non-Error, or kept an fd').toEqual([]);
    // guest_memfd creation says so exactly (its thread was made typed before this suite).
    for (const t of r.tries.filter((x) => x.name === 'kvmCreateGuestMemfd')) {
      expect(t.error).toMatchObject({ ctor: 'KvmError', code: 'EAGAIN', syscall: 'pthread_create' });
    }
    expect(r.after.filter((t) => !t.ok), 'calls that fail after the limit is lifted').toEqual([]);
    expect(r.left).toEqual({ fds: 0, extra: [], kvm: [], maps: [] });
  }

  it('FdChannel and FdListener waits fail and leave nothing behind, then work', async (ctx) => {
    await check(ctx, 'pids-plain', false);
  }, hangBound(120_000));

  it('guest_memfd creation and vCPU runs fail and leave nothing behind, then work', async (ctx) => {
    openKvm(ctx).close();
    await check(ctx, 'pids-kvm', true);
  }, hangBound(120_000));
});

describe(`memory exhaustion (a memory cgroup ${HEADROOM / MiB} MiB above the process)`, () => {
  // Each call asks for BIG at once; the same with SMALL must work under the limit.
  const calls = `
  async populateAnonymous() { const m = Mapping.anonymous(${BIG}); try { m.advise(23); } finally { m.close(); } },
  async populateAnonymousSmall() { const m = Mapping.anonymous(${SMALL}); try { m.advise(23); } finally { m.close(); } },
  async kvmAllocate() { const g = vm.createGuestMemfd({ size: ${BIG} }); try { g.allocate(0, ${BIG}); } finally { g.close(); } },
  async kvmAllocateSmall() { const g = vm.createGuestMemfd({ size: ${SMALL} }); try { g.allocate(0, ${SMALL}); } finally { g.close(); } },
  async kvmPopulateGuestMemfd() { const g = vm.createGuestMemfd({ size: ${BIG}, flags: 3n }); const m = g.map(); try { m.advise(23); } finally { m.close(); g.close(); } },
`;
  // The kernel refuses the charge (ENOMEM) instead of killing this process, the only one in the
  // cgroup; the limit is set again before each call (the rescuer may have raised it, see cgroup.ts).
  const limit = { once: 'refuseInsteadOfKill();', each: `setLimit(usage() + ${HEADROOM});` };

  async function check(ctx: TestContext, name: string, kvm: boolean) {
    // Fewer tries: under CPU emulation each one zeroes HEADROOM of memory before it fails.
    const r = await run(ctx, name, 'memory', kvm, (seed) => child(seed, kvm, limit, calls, Math.ceil(TRIES / 2)));
    for (const t of r.tries) {
      if (t.name.endsWith('Small')) expect(t, 'a small request under the limit').toMatchObject({ ok: true, left: 0 });
      else expect(t, 'a request past the limit').toMatchObject({ ok: false, typed: true, error: { ctor: 'KvmError', code: 'ENOMEM' }, left: 0 });
    }
    expect(r.after.filter((t) => !t.ok), 'calls that fail after the limit is lifted').toEqual([]);
    expect(r.left).toEqual({ fds: 0, extra: [], kvm: [], maps: [] });
  }

  it('populating an anonymous mapping past the limit is KvmError ENOMEM, the process lives on', async (ctx) => {
    await check(ctx, 'memory-plain', false);
  }, hangBound(120_000));

  it('allocating and populating guest_memfds past the limit is KvmError ENOMEM, the process lives on', async (ctx) => {
    openKvm(ctx).close();
    await check(ctx, 'memory-kvm', true);
  }, hangBound(120_000));
});
