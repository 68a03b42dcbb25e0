/**
 * The Worker module of the termination scenario: one kind of blocking call per Worker, entered
 * after 'ready' is posted, with an operation counter in shared memory (a terminated Worker
 * cannot report). `warm`: the same calls, bounded, everything closed after (the baseline run).
 */
import { dist } from './harness.js';

/** Kinds that need no /dev/kvm; they create no fd once ready. */
export const PLAIN_KINDS = ['send', 'receive', 'accept', 'connect', 'pingpong'] as const;
/** Kinds that run guests or work on guest_memfds made before ready; they create no fd once ready. */
export const KVM_KINDS = ['run', 'runAsync', 'runLoop', 'gmem'] as const;
/** Kinds that create fds (or receive them) all the time, so an ending lands inside creation. */
export const CREATING_PLAIN_KINDS = ['pairs', 'receiveFds'] as const;
export const CREATING_KVM_KINDS = ['gmemCreate', 'objects'] as const;
/** Kinds blocked in a synchronous call: no timer of their own can end them, only terminate(). */
export const SYNC_KINDS: readonly string[] = ['send', 'run'];

/** The Worker module's source. workerData: { kind, ending, endAfter, counter, dir, warm, kinds }. */
export function blockingWorker(): string {
  return `
import { parentPort, workerData, threadId } from 'node:worker_threads';
import { join } from 'node:path';
const { FdChannel } = await import(${dist('ipc/index')});
const { kind, ending, endAfter, counter, dir, warm } = workerData;
const ops = new Int32Array(counter);
const tick = () => Atomics.add(ops, 0, 1);
const yieldLoop = () => new Promise((r) => setImmediate(r));
const held = [];
const hold = (...xs) => { held.push(...xs); return xs; };
// 'exit' and 'throw' end the Worker from its own timer, at a random point after it is ready.
const ready = () => {
  if (warm) return;
  parentPort.postMessage('ready');
  if (ending === 'exit') setTimeout(() => process.exit(3), endAfter);
  if (ending === 'throw') setTimeout(() => { throw new Error('boom'); }, endAfter);
};
const timeout = (e) => { if (e?.code !== 'ERR_KVM_TIMEOUT') throw e; };
const SHARED = 3n; // GuestMemfdFlag.MMAP | INIT_SHARED

async function guest(image, args) {
  const { Kvm } = await import(${dist('kvm/kvm')});
  const { bootGuest } = await import(${dist('guest/boot')});
  const { guestImage } = await import(${dist('guest/images')});
  const [kvm] = hold(Kvm.open());
  const [vm] = hold(kvm.createVm());
  const [gmem] = hold(vm.createGuestMemfd({ size: 4 << 20, flags: SHARED }));
  const [map] = hold(gmem.map());
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: map, guestMemfd: gmem });
  const [vcpu] = hold(vm.createVcpu(0));
  bootGuest(vcpu, { image: guestImage(image), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000, args });
  return vcpu;
}

const kinds = {
  // Fills the peer's queue (it never reads), then waits for room without a limit.
  async send() {
    const [a, b] = hold(...FdChannel.pair());
    try { for (;;) { a.send('x'.repeat(1000), [], { timeoutMs: 0 }); tick(); } } catch (e) { timeout(e); }
    ready();
    tick();
    try { a.send('one more', [], { timeoutMs: warm ? 1 : Infinity }); } catch (e) { timeout(e); }
  },
  // Waits for a message that never comes (its fd watch thread blocked in poll).
  async receive() {
    const [a, b] = hold(...FdChannel.pair());
    ready();
    tick();
    await a.receive(warm ? { timeoutMs: 1 } : {}).catch(timeout);
  },
  // Waits for a connection that never comes.
  async accept() {
    const [l] = hold(FdChannel.listen(join(dir, 'a' + threadId + '-' + Math.random().toString(36).slice(2, 8))));
    ready();
    tick();
    await l.accept(warm ? { timeoutMs: 1 } : {}).catch(timeout);
  },
  // Retries a connection to a path nobody listens on (timers, back-off).
  async connect() {
    ready();
    tick();
    await FdChannel.connect(join(dir, 'nobody'), { waitForListener: true, ...(warm ? { timeoutMs: 5 } : {}) }).catch(timeout);
  },
  // Messages back and forth, without fds (a received fd's teardown is regressions.test.ts's).
  async pingpong() {
    const [a, b] = hold(...FdChannel.pair());
    ready();
    for (let i = 0; !warm || i < 8; i++) {
      a.send({ i, pad: 'y'.repeat(i % 200) });
      const m = await b.receive();
      b.send(m.payload);
      m[Symbol.dispose]();
      (await a.receive())[Symbol.dispose]();
      tick();
      if (i % 8 === 0) await yieldLoop(); // a ready message resolves in a microtask: let timers in
    }
  },
  // A guest that never exits, run on this thread: only the watchdog's kicks can end the call.
  async run() {
    const vcpu = await guest(warm ? 'port_loop' : 'spin', warm ? [1000] : [0x100000]);
    ready();
    tick();
    vcpu.run();
  },
  // The same guest on the vCPU's own thread.
  async runAsync() {
    const vcpu = await guest(warm ? 'port_loop' : 'spin', warm ? [1000] : [0x100000]);
    ready();
    tick();
    await vcpu.runAsync();
  },
  // A guest that exits all the time, run alternately here and on the vCPU thread.
  async runLoop() {
    const vcpu = await guest('port_loop', [1e9]);
    ready();
    for (let i = 0; !warm || i < 8; i++) {
      if (i % 2) vcpu.run(); else await vcpu.runAsync();
      tick();
      if (i % 8 === 0) await yieldLoop();
    }
  },
  // Three guest_memfds made before ready, then allocated, mapped, written, punched and unmapped.
  async gmem() {
    const { Kvm } = await import(${dist('kvm/kvm')});
    const [kvm] = hold(Kvm.open());
    const [vm] = hold(kvm.createVm());
    const gs = hold(...[0, 1, 2].map(() => vm.createGuestMemfd({ size: 2 << 20, flags: SHARED })));
    ready();
    for (let i = 0; !warm || i < 4; i++) {
      const g = gs[i % 3];
      g.allocate(0, 2 << 20);
      const m = g.map();
      m.bytes[4096] = i & 0xff;
      g.punchHole(0, 1 << 20);
      if (i % 2) m.close(); // the others are left to the GC, or to the Worker's teardown
      tick();
      await yieldLoop();
    }
  },
  // guest_memfds created, allocated, mapped, written, punched; the last few left open.
  async gmemCreate() {
    const { Kvm } = await import(${dist('kvm/kvm')});
    const [kvm] = hold(Kvm.open());
    const [vm] = hold(kvm.createVm());
    const live = [];
    ready();
    for (let i = 0; !warm || i < 4; i++) {
      const g = vm.createGuestMemfd({ size: 2 << 20, flags: SHARED });
      live.push(g);
      g.allocate(0, 2 << 20);
      const m = g.map();
      live.push(m);
      m.bytes[4096] = i & 0xff;
      g.punchHole(0, 1 << 20);
      if (live.length > 6) { live.shift().close(); live.shift().close(); }
      tick();
      await yieldLoop();
    }
    hold(...live);
  },
  // Socket pairs made and closed; the last few left open.
  async pairs() {
    const live = [];
    ready();
    for (let i = 0; !warm || i < 16; i++) {
      live.push(...FdChannel.pair());
      if (live.length > 6) { live.shift().close(); live.shift().close(); }
      tick();
      if (i % 16 === 0) await yieldLoop();
    }
    hold(...live);
  },
  // Messages carrying a socket each, received and disposed; the last few left undisposed.
  async receiveFds() {
    const [a, b, c] = hold(...FdChannel.pair(), ...FdChannel.pair());
    const live = [];
    ready();
    for (let i = 0; !warm || i < 8; i++) {
      a.send(i, [c]);
      live.push(await b.receive());
      if (live.length > 3) live.shift()[Symbol.dispose]();
      tick();
      if (i % 8 === 0) await yieldLoop();
    }
    for (const m of live) m[Symbol.dispose]();
  },
  // VMs, bound guest_memfds, vCPUs and socket pairs with the three in flight; the last few left open.
  async objects() {
    const { Kvm } = await import(${dist('kvm/kvm')});
    const [kvm] = hold(Kvm.open());
    const live = [];
    ready();
    for (let i = 0; !warm || i < 4; i++) {
      const vm = kvm.createVm();
      const g = vm.createGuestMemfd({ size: 1 << 20 });
      vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 1 << 20, guestMemfd: g });
      const v = vm.createVcpu(0);
      const [a, b] = FdChannel.pair();
      a.send(i, [g, vm, v]);
      live.push([a, b, v, g, vm]);
      if (live.length > 2) for (const o of live.shift()) o.close();
      tick();
      await yieldLoop();
    }
    for (const set of live) hold(...set);
  },
};

if (warm) {
  // The warm-up: every kind in turn, everything closed after each.
  for (const k of workerData.kinds) {
    await kinds[k]();
    for (const o of held.splice(0).reverse()) o.close();
  }
} else {
  await kinds[kind]();
}
`;
}
