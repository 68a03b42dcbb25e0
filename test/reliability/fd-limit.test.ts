// Creation at the fd limit (issue 11): in a child Node process under `prlimit --nofile`, the fd
// table is filled up to the limit but for k free slots (k = 0..K_MAX), and every operation that
// makes fds is tried in every such state: socket pairs, listen, connect + accept, a receive's wait
// thread, received fds, memfds, /dev/kvm, VMs, vCPUs, guest_memfds, adopted duplicates. Each must
// succeed when it has room, fail with a typed error when it has not, and hold no fd once its
// objects are closed (exactly k slots free again). After all of it, everything works once more.
import { describe, expect, it, type TestContext } from 'vitest';
import { hangBound, openKvm } from '../kvm-host.js';
import { dist, expectEnded, prelude, printRefusals, result, runNode, scaled, scratch, seedOf, summary } from './harness.js';

/** The most free slots tried, and the fd limit of the child. */
const K_MAX = 4;
const NOFILE = 256;
/** Passes over every (operation, k) pair, in a seeded random order. */
const PASSES = scaled(1);

/**
 * The operations: `need` is how many free slots each must succeed with. A guest_memfd needs 2 (its
 * socket pair; the sending end is closed before the fd is received into its number, see
 * native/core/private_fd.cc); a vCPU 2 (its fd and its runner's duplicate). `prep` makes what the operation works on, before the table is filled.
 */
const OPS = `
const path = () => ${JSON.stringify(scratch())} + '/limit-' + process.pid + '-' + Math.random().toString(36).slice(2, 8);
const ops = {
  pair: { need: 2, run: async (p, made) => { made.push(...FdChannel.pair()); } },
  listen: { need: 1, run: async (p, made) => { made.push(FdChannel.listen(path())); } },
  connectAccept: {
    need: 2,
    prep: () => { const l = FdChannel.listen(path()); return { l, keep: [l] }; },
    run: async (p, made) => { made.push(await FdChannel.connect(p.l.path)); made.push(await p.l.accept({ timeoutMs: T })); },
  },
  fromFdDup: {
    need: 1,
    prep: () => { const [a, b] = FdChannel.pair(); return { a, keep: [a, b] }; },
    run: async (p, made) => { made.push(FdChannel.fromFd(p.a.fd, { dup: true })); },
  },
  // A receive that waits: its watch thread takes a duplicate of the socket and an eventfd.
  receiveWait: {
    need: 2,
    prep: () => { const [a, b] = FdChannel.pair(); return { a, keep: [a, b] }; },
    run: async (p) => { await p.a.receive({ timeoutMs: 1 }).catch((e) => { if (e.code !== 'ERR_KVM_TIMEOUT') throw e; }); },
  },
  receiveFds: {
    need: 3,
    prep: () => {
      const [a, b] = FdChannel.pair();
      const m = [0, 1, 2].map((i) => native.memfdCreate('limit' + i));
      a.send('three', m);
      for (const fd of m) native.close(fd);
      return { b, keep: [a, b] };
    },
    run: async (p, made) => { made.push(await p.b.receive({ timeoutMs: T })); },
  },
  memfd: { need: 1, run: async (p, made) => { const fd = native.memfdCreate('limit'); made.push({ close: () => native.close(fd) }); } },
};
const kvmOps = {
  kvmOpen: { need: 1, run: async (p, made) => { made.push(Kvm.open()); } },
  createVm: {
    need: 1,
    prep: () => { const kvm = Kvm.open(); return { kvm, keep: [kvm] }; },
    run: async (p, made) => { made.push(p.kvm.createVm()); },
  },
  createVcpu: {
    need: 2,
    prep: () => { const kvm = Kvm.open(); const vm = kvm.createVm(); return { vm, keep: [vm, kvm] }; },
    run: async (p, made) => { made.push(p.vm.createVcpu(0)); },
  },
  createGuestMemfd: {
    need: 2,
    prep: () => { const kvm = Kvm.open(); const vm = kvm.createVm(); return { vm, keep: [vm, kvm] }; },
    run: async (p, made) => { made.push(p.vm.createGuestMemfd({ size: 1 << 20, flags: BigInt(randInt(0, 3)) })); },
  },
  adoptDup: {
    need: 1,
    prep: () => { const kvm = Kvm.open(); const vm = kvm.createVm(); const g = vm.createGuestMemfd({ size: 1 << 20, flags: 3n }); return { g, keep: [g, vm, kvm] }; },
    run: async (p, made) => { made.push(GuestMemfd.adopt(p.g.fd, { size: 1 << 20, flags: 3n, dup: true })); },
  },
  receiveGmem: {
    need: 1,
    prep: () => {
      const kvm = Kvm.open(); const vm = kvm.createVm(); const g = vm.createGuestMemfd({ size: 1 << 20, flags: 3n });
      const [a, b] = FdChannel.pair();
      a.send({ size: 1 << 20 }, [g]);
      return { b, keep: [a, b, g, vm, kvm] };
    },
    run: async (p, made) => { const m = await p.b.receive({ timeoutMs: T }); made.push(m); made.push(GuestMemfd.adopt(m.fds[0], { size: 1 << 20, flags: 3n })); },
  },
};
`;

function source(seed: number, kvm: boolean): string {
  return `${prelude(seed)}
import { openSync, closeSync } from 'node:fs';
import { FdChannel } from ${dist('ipc/index')};
import { KvmError, KvmStateError } from ${dist('core/errors')};
import { native } from ${dist('core/native')};
${kvm ? `import { Kvm } from ${dist('kvm/kvm')}; import { GuestMemfd } from ${dist('kvm/guest-memfd')};` : ''}
const T = ${hangBound(10_000)};
${OPS}
const all = ${kvm} ? { ...ops, ...kvmOps } : ops;
const typed = (e) => (e instanceof KvmStateError && /^ERR_KVM_/.test(e.code)) || (e instanceof KvmError && /^E[A-Z0-9]+$/.test(e.code));
const filler = [];
const fill = () => { for (;;) { try { filler.push(openSync('/dev/null', 'r')); } catch (e) { if (e.code !== 'EMFILE') throw e; return; } } };
const release = (n) => { for (let i = 0; i < n && filler.length; i++) closeSync(filler.pop()); };
const closeAll = (xs) => { for (const o of xs.reverse()) { try { o.close ? o.close() : o[Symbol.dispose](); } catch (e) { out({ type: 'close-failed', error: describeError(e) }); } } };
const trial = async (name, k) => {
  const op = all[name];
  release(filler.length);
  const prepFds = links().size;
  const p = op.prep ? op.prep() : { keep: [] };
  const held = links().size - prepFds;
  fill();
  release(k);
  const made = [];
  let r;
  try { await op.run(p, made); r = { ok: true }; } catch (e) { r = { ok: false, typed: typed(e), error: describeError(e) }; }
  closeAll(made);
  closeAll(p.keep);
  // Every slot the operation had is free again (and those of what it worked on), or it kept an fd.
  const before = filler.length;
  fill();
  const free = filler.length - before - held;
  release(filler.length);
  return { op: name, k, need: op.need, free, ...r };
};
// Once each with room: what a process opens once (a thread's eventfd, libuv's pool) is the baseline.
for (const name of Object.keys(all)) await trial(name, 16);
const base = snap();
const plan = [];
for (let pass = 0; pass < ${PASSES}; pass++) for (const name of Object.keys(all)) for (let k = 0; k <= ${K_MAX}; k++) plan.push([name, k]);
for (let i = plan.length - 1; i > 0; i--) { const j = randInt(0, i); [plan[i], plan[j]] = [plan[j], plan[i]]; }
const trials = [];
for (const [name, k] of plan) trials.push(await trial(name, k));
// With the table free again, everything works.
const after = [];
for (const name of Object.keys(all)) after.push(await trial(name, 16));
const now = snap();
out({ type: 'result', trials, after, left: { fds: now.fds - base.fds, extra: newLinks(base.links, now.links), kvm: now.kvm, maps: now.maps } });
`;
}

interface Trial {
  op: string;
  k: number;
  need: number;
  free: number;
  ok: boolean;
  typed?: boolean;
  error?: { ctor: string; code: string; syscall?: string; message: string };
}

async function run(ctx: TestContext, name: string, kvm: boolean): Promise<void> {
  const seed = seedOf(name);
  await ctx.annotate(`seed ${seed}`);
  const c = await runNode(source(seed, kvm), { timeoutMs: 90_000, wrapper: ['prlimit', `--nofile=${NOFILE}:${NOFILE}`, '--'] });
  expectEnded(c, seed);
  const r = result<{ trials: Trial[]; after: Trial[]; left: unknown }>(c);
  const failed = r.trials.filter((t) => !t.ok);
  summary(name, { trials: r.trials.length, refused: failed.length, afterwards: r.after.length }, c.ms);
  // Room enough: it works. Too little: a typed error (KvmError EMFILE and the like). Never an fd kept.
  const wrong = r.trials.filter((t) => t.free !== t.k || (t.k >= t.need ? !t.ok : t.ok || !t.typed));
  expect(wrong, `seed ${seed}: trials that kept an fd, failed with room, or failed untyped`).toEqual([]);
  expect(r.after.filter((t) => !t.ok || t.free !== t.k), `seed ${seed}`).toEqual([]);
  expect(r.left, `seed ${seed}`).toEqual({ fds: 0, extra: [], kvm: [], maps: [] });
  printRefusals(name, failed);
}

describe(`operations at the fd limit (prlimit --nofile=${NOFILE}, 0..${K_MAX} slots free)`, () => {
  it('FdChannel, FdListener, received fds and memfds: typed errors without room, nothing kept, all fine after', async (ctx) => {
    await run(ctx, 'fd-limit-plain', false);
  }, hangBound(120_000));

  it('/dev/kvm, VMs, vCPUs, guest_memfds and adopted ones: typed errors without room, nothing kept, all fine after', async (ctx) => {
    openKvm(ctx).close();
    await run(ctx, 'fd-limit-kvm', true);
  }, hangBound(120_000));
});
