// Passing fds over Unix sockets (FdChannel, FdListener) between real processes, and adopting a
// received guest_memfd. The child processes run the built package (dist/: `npm run build`, or
// `npx tsc -p tsconfig.json`, before `npx vitest run`), with the same addon (KVM_GMEM_ADDON is
// inherited).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { GuestMemfd, GuestMemfdFlag, KvmError, KvmStateError, PAGE_SIZE } from '../lib/index.js';
import { FdChannel, FdListener, MAX_FDS, MAX_PAYLOAD } from '../lib/ipc/index.js';
import { native } from '../lib/core/native.js';
import { rawSend } from './c-fixtures.js';
import { fdLink, isCloexec, openFds, openKvm, thrown, hangBound } from './kvm-host.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-fdpass-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `body` (an async module body) in a child Node process that imports the built package.
 * With `end`, that socket end becomes the child's fd 3 (`chan` there is FdChannel.fromFd(3)) and
 * is closed here; `extra` fds follow it as 4, 5... `out(v)` in the child prints v as JSON.
 */
function child(body: string, end?: FdChannel, extra: number[] = []): Promise<ChildResult> & { proc: ChildProcess } {
  if (!existsSync(join(root, 'dist', 'ipc', 'index.js'))) throw new Error('dist/ is not built: run `npm run build` first');
  const script = `
    import { Cap, GuestMemfd, GuestMemfdFlag, Kvm, KvmError, PAGE_SIZE } from ${JSON.stringify(root + 'dist/index.js')};
    import { FdChannel, MAX_FDS } from ${JSON.stringify(root + 'dist/ipc/index.js')};
    import { native } from ${JSON.stringify(root + 'dist/core/native.js')};
    import { readFileSync, readdirSync } from 'node:fs';
    const cloexec = (fd) => (parseInt(/^flags:\\s+([0-7]+)$/m.exec(readFileSync('/proc/self/fdinfo/' + fd, 'utf8'))[1], 8) & 0o2000000) !== 0;
    const fdCount = () => readdirSync('/proc/self/fd').length;
    const out = (v) => process.stdout.write(JSON.stringify(v));
    const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
    ${end ? 'const chan = FdChannel.fromFd(3);' : ''}
    try {
      ${body}
    } catch (e) {
      process.stderr.write(String(e && e.stack || e));
      process.exit(1);
    }
  `;
  const stdio: ('ignore' | 'pipe' | number)[] = ['ignore', 'pipe', 'pipe'];
  if (end) stdio.push(end.fd);
  stdio.push(...extra); // fds 4, 5... in the child (after the socket at 3)
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio });
  end?.close();
  let stdout = '';
  let stderr = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
  const done = new Promise<ChildResult>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return Object.assign(done, { proc: p });
}

/** Sends one raw message from test/fixtures/raw-send.c (see rawSend); checks it went out. */
function rawSendOk(sock: number, length: number, fill: number, fds: readonly (number | string)[]): boolean[] {
  const r = rawSend(sock, length, fill, fds);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.cloexec;
}

/** The child finished cleanly; returns what it printed (JSON), if anything. */
function ok(r: ChildResult): unknown {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return r.stdout ? JSON.parse(r.stdout) : undefined;
}

describe('FdChannel between two processes', () => {
  it('parent -> child: guest_memfd + VM + memfd; the child adopts the guest_memfd, sees the data, punches and allocates, and the parent sees that', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using mine = g.map();
    mine.bytes.fill(0xab);
    const memfd = native.memfdCreate('kvm-gmem-plain');
    const [here, there] = FdChannel.pair();
    using _here = here;
    const done = child(
      `
      const msg = await chan.receive({ timeoutMs: 10_000 });
      const { size, flags } = msg.payload;
      const kinds = msg.fds.map((f) => f.kind);
      const allCloexec = msg.fds.every((f) => cloexec(f.fd));
      // A VM fd from another process: every VM ioctl is EIO (KVM ties a VM to its creator's mm).
      let vmErr;
      try { native.checkExtension(msg.fds[1].fd, Cap.GUEST_MEMFD); } catch (e) { vmErr = e.code; }
      const g = GuestMemfd.adopt(msg.fds[0], { size, flags: BigInt(flags) });
      const m = g.map();
      const seen = m.bytes[4096 * 100];
      g.punchHole(PAGE_SIZE, PAGE_SIZE);
      g.allocate(0, size);
      m.bytes[2 * 1024 * 1024] = 0x42;
      const vmFd = msg.fds[1].take();
      native.close(vmFd); // a raw received VM fd can be closed
      chan.send({ kinds, allCloexec, vmErr, seen, gmemCloexec: cloexec(g.fd), memfdLink: msg.fds[2].link });
      `,
      there,
    );
    here.send({ size: 4 * MiB, flags: Number(SHARED) }, [g, vm, memfd]);
    native.close(memfd);
    using reply = await here.receive({ timeoutMs: 20_000 });
    expect(reply.payload).toEqual({
      kinds: ['guest_memfd', 'vm', 'other'],
      allCloexec: true,
      vmErr: 'EIO',
      seen: 0xab,
      gmemCloexec: true,
      memfdLink: '/memfd:kvm-gmem-plain (deleted)',
    });
    ok(await done);
    expect(mine.bytes[PAGE_SIZE]).toBe(0); // punched by the child
    expect(mine.bytes[PAGE_SIZE - 1]).toBe(0xab);
    expect(mine.bytes[2 * MiB]).toBe(0x42); // written by the child
    // The child is gone: the channel reads end of file.
    await expect(here.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
  });

  it('child -> parent over a socket path (listen/accept here, connect there): the guest_memfd outlives the child and its VM', async (ctx) => {
    openKvm(ctx).close();
    const path = join(dir, 'upgrade.sock');
    using listener = FdChannel.listen(path);
    expect(statSync(path).isSocket()).toBe(true);
    expect(isCloexec(listener.fd)).toBe(true);
    const done = child(`
      const chan = await FdChannel.connect(${JSON.stringify(path)}, { timeoutMs: 10_000 });
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      const g = vm.createGuestMemfd({ size: 2 * 1024 * 1024, flags: SHARED });
      const m = g.map();
      m.bytes.fill(0x33);
      const vcpu = vm.createVcpu(0);
      const memfd = native.memfdCreate('from-child');
      chan.send({ size: 2 * 1024 * 1024, flags: Number(SHARED), pid: process.pid }, [g, vm, vcpu, memfd]);
      // Wait for the parent's word before exiting, so it sees the fds while we are alive too.
      const ack = await chan.receive({ timeoutMs: 10_000 });
      out(ack.payload);
    `);
    using conn = await listener.accept({ timeoutMs: 20_000 });
    expect(isCloexec(conn.fd)).toBe(true);
    using msg = await conn.receive({ timeoutMs: 20_000 });
    const p = msg.payload as { size: number; flags: number; pid: number };
    expect(msg.fds.map((f) => f.kind)).toEqual(['guest_memfd', 'vm', 'vcpu', 'other']);
    expect(msg.fds[2]!.link).toBe('anon_inode:kvm-vcpu:0');
    for (const f of msg.fds) expect(isCloexec(f.fd)).toBe(true);
    using g = GuestMemfd.adopt(msg.fds[0]!, p);
    conn.send('bye');
    expect(ok(await done)).toBe('bye');
    // The child, its Kvm, Vm and vCPU fds are gone; the received VM fd still pins the VM, and
    // the guest_memfd works on its own.
    msg.fds[1]!.close();
    msg.fds[2]!.close();
    using m = g.map();
    expect(m.bytes[0]).toBe(0x33);
    expect(m.bytes[2 * MiB - 1]).toBe(0x33);
    g.punchHole(0, PAGE_SIZE);
    expect(m.bytes[0]).toBe(0);
    await expect(conn.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
  });

  it('peer gone: a waiting receive rejects with ERR_KVM_PEER_CLOSED when the child exits, and send gives EPIPE', async () => {
    const [here, there] = FdChannel.pair();
    using _here = here;
    const waiting = here.receive({ timeoutMs: 20_000 }).catch((x: unknown) => x);
    const r = await child('setTimeout(() => process.exit(0), 50);', there);
    expect(r.code).toBe(0);
    const e = await waiting;
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e).toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
    const s = thrown(() => here.send({ late: true }));
    expect(s).toBeInstanceOf(KvmError);
    expect(s).toMatchObject({ code: 'EPIPE', syscall: 'sendmsg' });
  });

  it('peer killed with a message of ours unread: receive rejects ERR_KVM_PEER_CLOSED (the kernel says ECONNRESET first)', async () => {
    const [here, there] = FdChannel.pair();
    using _here = here;
    here.send({ never: 'read' });
    const running = child('await new Promise((res) => setTimeout(res, 60_000));', there);
    await new Promise((r) => setTimeout(r, 100));
    // The child holds the only other copy of its end: killing it releases the socket.
    running.proc.kill('SIGKILL');
    const r = await running;
    expect(r.signal).toBe('SIGKILL');
    const e = (await here.receive({ timeoutMs: 5000 }).catch((x: unknown) => x)) as KvmStateError;
    expect(e).toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
    expect(e.cause).toMatchObject({ code: 'ECONNRESET', syscall: 'recvmsg' });
    // The error is reported once; after it, the socket reads end of file.
    await expect(here.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
  });

  it('truncated control data: a message with more fds than maxFds is refused and every fd it carried is closed', async () => {
    const [here, there] = FdChannel.pair();
    using _here = here;
    const done = child(
      `
      const fds = [];
      for (let i = 0; i < 8; i++) fds.push(native.memfdCreate('m' + i));
      chan.send({ n: 5 }, fds.slice(0, 5)); // maxFds 2: the kernel truncates (MSG_CTRUNC)
      chan.send({ n: 4 }, fds.slice(0, 4)); // maxFds 3: fits the aligned buffer, counted and refused
      chan.send({ n: 1 }, fds.slice(0, 1)); // maxFds 0: no room at all
      chan.send({ n: 3 }, fds.slice(0, 3)); // fine
      chan.send({ n: 0 }); // fine: the channel goes on after each refusal
      const ack = await chan.receive({ timeoutMs: 10_000 });
      `,
      there,
    );
    // Count the fds messages could bring (memfds); the channel's own waiting adds a dup of its
    // socket and an eventfd, which stay until it is closed.
    const memfds = () => [...openFds().values()].filter((l) => l.startsWith('/memfd:')).length;
    const before = memfds();
    const codes: string[] = [];
    for (const maxFds of [2, 3, 0]) {
      const e = await here.receive({ maxFds, timeoutMs: 10_000 }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(KvmStateError);
      codes.push((e as { code: string }).code);
    }
    expect(codes).toEqual(['ERR_KVM_CONTROL_TRUNCATED', 'ERR_KVM_CONTROL_TRUNCATED', 'ERR_KVM_CONTROL_TRUNCATED']);
    expect(memfds()).toBe(before); // nothing leaked
    {
      using m = await here.receive({ maxFds: 3, timeoutMs: 10_000 });
      expect(m.payload).toEqual({ n: 3 });
      expect(m.fds.map((f) => f.link)).toEqual(['/memfd:m0 (deleted)', '/memfd:m1 (deleted)', '/memfd:m2 (deleted)']);
    }
    {
      using m = await here.receive({ maxFds: 0, timeoutMs: 10_000 });
      expect(m.payload).toEqual({ n: 0 });
    }
    expect(memfds()).toBe(before);
    here.send('ack');
    ok(await done);
  });

  it('many fds: MAX_FDS in one message arrive in order, close-on-exec, and all close on dispose', async () => {
    const [here, there] = FdChannel.pair();
    using _here = here;
    const done = child(
      `
      const fds = [];
      for (let i = 0; i < MAX_FDS; i++) fds.push(native.memfdCreate('n' + i));
      chan.send({ count: fds.length }, fds);
      for (const fd of fds) native.close(fd);
      `,
      there,
    );
    const memfds = () => [...openFds().values()].filter((l) => l.startsWith('/memfd:')).length;
    const before = memfds();
    {
      using m = await here.receive({ timeoutMs: 10_000 });
      expect(m.payload).toEqual({ count: MAX_FDS });
      expect(m.fds.length).toBe(MAX_FDS);
      m.fds.forEach((f, i) => {
        expect(f.link).toBe(`/memfd:n${i} (deleted)`);
        expect(isCloexec(f.fd)).toBe(true);
      });
      expect(memfds()).toBe(before + MAX_FDS);
    }
    expect(memfds()).toBe(before);
    ok(await done);
  });
});

describe('adopting a guest_memfd', () => {
  it('refuses a received fd of the wrong type, leaving it to the message', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    const memfd = native.memfdCreate('not-gmem');
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    a.send({ size: MiB }, [memfd, vm]);
    native.close(memfd);
    const before = openFds().size;
    {
      using m = await b.receive();
      for (const f of m.fds) {
        const e = thrown(() => GuestMemfd.adopt(f, { size: MiB, flags: 0 }));
        expect(e).toBeInstanceOf(TypeError);
        expect(e.code).toBe('ERR_KVM_NOT_GUEST_MEMFD');
        expect(e.message).toContain(f.link);
        expect(f.closed).toBe(false);
      }
      // Both still open as the message's own (a VM fd is also duplicated into the environment's
      // fd record, so the count alone would not say it).
      for (const f of m.fds) expect(openFds().get(f.fd)).toBe(f.link);
    }
    expect(openFds().size).toBe(before); // the message closed both on dispose
  });

  it('refuses a size or an MMAP flag that disagrees with the file, and a closed or taken fd', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using plain = vm.createGuestMemfd({ size: MiB }); // no MMAP
    const size = thrown(() => GuestMemfd.adopt(g.fd, { size: 2 * MiB, flags: SHARED }));
    expect(size).toBeInstanceOf(RangeError);
    expect(size.code).toBe('ERR_KVM_SIZE_MISMATCH');
    expect(size.message).toMatch(/1048576 bytes.*2097152/);
    expect(thrown(() => GuestMemfd.adopt(g.fd, { size: MiB, flags: 0 })).code).toBe('ERR_KVM_FLAGS_MISMATCH');
    expect(thrown(() => GuestMemfd.adopt(plain.fd, { size: MiB, flags: GuestMemfdFlag.MMAP })).code).toBe('ERR_KVM_FLAGS_MISMATCH');
    expect(thrown(() => GuestMemfd.adopt(0x7ffffff0, { size: MiB, flags: 0 }))).toMatchObject({ code: 'EBADF', syscall: 'fstat' });
    expect(() => GuestMemfd.adopt(g.fd, { size: MiB } as never)).toThrow(TypeError); // flags are required
    expect(() => GuestMemfd.adopt(-1, { size: MiB, flags: 0 })).toThrow(RangeError);
    expect(() => GuestMemfd.adopt(g.fd, null as never)).toThrow(TypeError);
    expect(() => GuestMemfd.adopt(g.fd, { size: -1, flags: 0 })).toThrow(RangeError);
    // Adopting a raw fd: the GuestMemfd owns it, sets FD_CLOEXEC, and works like one made here.
    const raw = native.createGuestMemfd(vm.fd, MiB, SHARED);
    const adopted = GuestMemfd.adopt(raw, { size: BigInt(MiB), flags: SHARED });
    expect(isCloexec(raw)).toBe(true);
    adopted.allocate(0, MiB);
    adopted.close();
    expect(() => fdLink(raw)).toThrow(); // closed with the object
  });

  it('a ReceivedFd already taken or closed cannot be adopted', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    a.send(null, [g, g]);
    using m = await b.receive();
    const fd = m.fds[0]!.take();
    expect(thrown(() => GuestMemfd.adopt(m.fds[0]!, { size: MiB, flags: SHARED })).code).toBe('ERR_KVM_CLOSED');
    expect(thrown(() => m.fds[0]!.take()).code).toBe('ERR_KVM_CLOSED');
    m.fds[1]!.close();
    expect(thrown(() => GuestMemfd.adopt(m.fds[1]!, { size: MiB, flags: SHARED })).code).toBe('ERR_KVM_CLOSED');
    using taken = GuestMemfd.adopt(fd, { size: MiB, flags: SHARED });
    expect(taken.stat().ino).toBe(g.stat().ino);
  });
});

describe('FdChannel errors, limits and hygiene', () => {
  it('send checks its arguments before any system call', (ctx) => {
    using kvm = openKvm(ctx);
    const [a, b] = FdChannel.pair();
    using _b = b;
    // MAX_FDS + 1 fds that do not exist: the count is refused first, not EBADF.
    expect(() => a.send(null, new Array(MAX_FDS + 1).fill(0x7ffffff0))).toThrow(RangeError);
    expect(() => a.send(null, new Array(MAX_FDS + 1).fill(0x7ffffff0))).toThrow(`at most ${MAX_FDS} fds`);
    expect(() => a.send(null, ['3' as never])).toThrow(TypeError);
    expect(() => a.send(null, [{ fd: 3 } as never])).toThrow(TypeError);
    expect(() => a.send(null, [-1])).toThrow(RangeError);
    expect(() => a.send(null, 'x' as never)).toThrow(TypeError);
    expect(() => a.send(1n)).toThrow(TypeError); // JSON cannot encode a bigint
    expect(() => a.send(() => 0)).toThrow(TypeError);
    expect(() => a.send(null, [], { timeoutMs: -1 })).toThrow(RangeError);
    const closed = kvm.createVm();
    closed.close();
    expect(thrown(() => a.send(null, [closed])).code).toBe('ERR_KVM_CLOSED');
    expect(thrown(() => a.send(null, [0x7ffffff0]))).toMatchObject({ code: 'EBADF', syscall: 'sendmsg' });
    a.close();
    expect(thrown(() => a.send(null)).code).toBe('ERR_KVM_CLOSED');
    a.close(); // idempotent
  });

  it('receive refuses a truncated payload, an empty message with fds, and a payload that is not JSON, closing their fds', async () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const before = openFds();
    const m1 = native.memfdCreate('x1');
    const m2 = native.memfdCreate('x2');
    // Raw messages no FdChannel would send.
    rawSendOk(a.fd, MAX_PAYLOAD + 1, 0x20, [m1, m2]);
    native.sendMsg(a.fd, new Uint8Array(0), [m1], 0);
    native.sendMsg(a.fd, new TextEncoder().encode('{nope'), [m1, m2], 0);
    native.sendMsg(a.fd, new Uint8Array([0x22, 0xff, 0x22]), [m2], 0); // not UTF-8
    native.close(m1);
    native.close(m2);
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_PAYLOAD_TRUNCATED' });
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_BAD_MESSAGE' });
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_BAD_MESSAGE' });
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_BAD_MESSAGE' });
    expect(openFds()).toEqual(before);
    a.send([1, 'two']);
    using m = await b.receive();
    expect(m.payload).toEqual([1, 'two']);
  });

  it('receives are served in call order; timeouts; close while waiting; options checked', async () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    const first = b.receive();
    const second = b.receive();
    a.send(1);
    a.send(2);
    expect((await first).payload).toBe(1);
    expect((await second).payload).toBe(2);
    const t0 = performance.now();
    await expect(b.receive({ timeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(45);
    await expect(b.receive({ timeoutMs: 0 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    a.send('ready');
    expect((await b.receive({ timeoutMs: 0 })).payload).toBe('ready'); // a waiting message needs no wait
    for (const bad of [{ timeoutMs: -1 }, { timeoutMs: NaN }, { maxFds: 254 }, { maxFds: 1.5 }]) {
      await expect(b.receive(bad)).rejects.toThrow(RangeError);
    }
    for (const bad of [{ timeoutMs: '1' }, { maxFds: '1' }, null, 5]) await expect(b.receive(bad as never)).rejects.toThrow(TypeError);
    const waiting = b.receive();
    const queued = b.receive();
    b.close();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    await expect(queued).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
  });

  it('every received fd is close-on-exec, also ones the sender had without it (a sender that is not the library)', async () => {
    // Node marks every fd it inherits or creates close-on-exec, so the sender is a C program
    // (test/fixtures/raw-send.c) with a memfd of its own made without MFD_CLOEXEC, and the
    // socket it inherited, which exec left without FD_CLOEXEC.
    const [here, there] = FdChannel.pair();
    using _here = here;
    try {
      expect(rawSendOk(there.fd, 1, 0x37, ['memfd:from-c', there.fd])).toEqual([false, false]); // not close-on-exec in the sender
    } finally {
      there.close();
    }
    using m = await here.receive({ timeoutMs: 10_000 });
    expect(m.payload).toBe(7); // the one byte '7'
    expect(m.fds.map((f) => isCloexec(f.fd))).toEqual([true, true]);
    expect(m.fds[0]!.link).toBe('/memfd:from-c (deleted)');
    expect(m.fds[1]!.link).toMatch(/^socket:/);
  });

  it('fromFd adopts only a connected AF_UNIX SOCK_SEQPACKET socket, and sets FD_CLOEXEC', () => {
    const memfd = native.memfdCreate('not-a-socket');
    const l = FdChannel.listen(join(dir, 'fromfd.sock'));
    try {
      expect(thrown(() => FdChannel.fromFd(memfd))).toMatchObject({ name: 'TypeError', code: 'ERR_KVM_NOT_SEQPACKET' });
      expect(thrown(() => FdChannel.fromFd(l.fd))).toMatchObject({ name: 'TypeError', code: 'ERR_KVM_NOT_SEQPACKET' });
      expect(thrown(() => FdChannel.fromFd(0x7ffffff0))).toMatchObject({ code: 'EBADF' });
      expect(() => FdChannel.fromFd('3' as never)).toThrow(TypeError);
      const [x, y] = native.socketPair();
      native.close(y);
      const fd = native.unixListen(join(dir, 'raw.sock'), 1);
      native.close(fd);
      using c = FdChannel.fromFd(x);
      expect(c.fd).toBe(x);
      expect(isCloexec(x)).toBe(true);
    } finally {
      native.close(memfd);
      l.close();
    }
  });

  it('listen/connect/accept: a stale socket file is replaced, anything else at the path is left alone, close() unlinks', async () => {
    const path = join(dir, 'listen.sock');
    // A stale socket file: bound, then its socket closed without unlinking.
    native.close(native.unixListen(path, 1));
    expect(statSync(path).isSocket()).toBe(true);
    const l = FdChannel.listen(path);
    expect(l).toBeInstanceOf(FdListener);
    expect(l.path).toBe(path);
    // A live listener at the path is not taken over.
    const live = thrown(() => FdChannel.listen(path));
    expect(live).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind' });
    expect(live.message).toMatch(/a process is listening/);
    // The probe connection made above reaches the live listener; it reads end of file.
    {
      using probe = await l.accept({ timeoutMs: 1000 });
      await expect(probe.receive({ timeoutMs: 1000 })).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
    }
    const p = FdChannel.connect(path);
    using server = await l.accept({ timeoutMs: 5000 });
    using client = await p;
    client.send({ hi: 1 });
    expect((await server.receive()).payload).toEqual({ hi: 1 });
    server.send({ ho: 2 });
    expect((await client.receive()).payload).toEqual({ ho: 2 });
    await expect(l.accept({ timeoutMs: 30 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    const waiting = l.accept();
    l.close();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    expect(existsSync(path)).toBe(false);
    l.close(); // idempotent
    // A regular file at the path is never unlinked.
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    const e = thrown(() => FdChannel.listen(file));
    expect(e).toMatchObject({ code: 'EADDRINUSE' });
    expect(e.message).toMatch(/not a socket/);
    expect(readFileSync(file, 'utf8')).toBe('keep me');
    // Paths and options are checked.
    expect(() => FdChannel.listen('')).toThrow(TypeError);
    expect(() => FdChannel.listen(join(dir, 'x'.repeat(120)))).toThrow(RangeError);
    expect(() => FdChannel.listen(join(dir, 'b.sock'), { backlog: 0 })).toThrow(RangeError);
    expect(thrown(() => FdChannel.listen(join(dir, 'no', 'such', 'dir.sock')))).toMatchObject({ code: 'ENOENT', syscall: 'bind' });
  });

  it('connect: ENOENT and ECONNREFUSED at once, or waits for the listener with waitForListener until its timeout', async () => {
    const path = join(dir, 'later.sock');
    await expect(FdChannel.connect(path)).rejects.toMatchObject({ code: 'ENOENT', syscall: 'connect' });
    await expect(FdChannel.connect(path, { waitForListener: true, timeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    native.close(native.unixListen(path, 1)); // stale: nobody listens
    await expect(FdChannel.connect(path)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    const p = FdChannel.connect(path, { waitForListener: true, timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 30));
    using l = FdChannel.listen(path);
    using c = await p;
    using s = await l.accept();
    c.send('late but fine');
    expect((await s.receive()).payload).toBe('late but fine');
    await expect(FdChannel.connect(path, { timeoutMs: -5 })).rejects.toThrow(RangeError);
    await expect(FdChannel.connect(path, { waitForListener: 1 } as never)).rejects.toThrow(TypeError);
  });

  it('leaks no fd over 2,000 messages with fds and every error path', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const before = openFds();
    const [a, b] = FdChannel.pair();
    for (let i = 0; i < 2000; i++) {
      a.send({ i }, [g, vm]);
      if (i % 3 === 0) {
        await expect(b.receive({ maxFds: 1 })).rejects.toMatchObject({ code: 'ERR_KVM_CONTROL_TRUNCATED' });
        continue;
      }
      using m = await b.receive();
      expect(m.payload).toEqual({ i });
      expect(m.fds.map((f) => f.kind)).toEqual(['guest_memfd', 'vm']);
      if (i % 3 === 1) GuestMemfd.adopt(m.fds[0]!, { size: MiB, flags: SHARED }).close();
    }
    a.close();
    await expect(b.receive()).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
    b.close();
    expect(openFds()).toEqual(before);
  });

  it('channels dropped without close() are closed when collected (safety net), and an idle one does not hold the process', () => {
    const script = `
      import { FdChannel } from ${JSON.stringify(root + 'dist/ipc/index.js')};
      import { readdirSync, readlinkSync } from 'node:fs';
      const sockets = () => readdirSync('/proc/self/fd').filter((n) => { try { return readlinkSync('/proc/self/fd/' + n).startsWith('socket:'); } catch { return false; } }).length;
      const base = sockets();
      (() => { for (let i = 0; i < 20; i++) { const [a, b] = FdChannel.pair(); a.send(i); } })();
      const [a, b] = FdChannel.pair();
      await b.receive({ timeoutMs: 10 }).catch(() => {}); // its wait thread is started, then idle
      const made = sockets();
      for (let i = 0; i < 20 && sockets() > base + 3; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
      console.log(JSON.stringify({ made: made - base, left: sockets() - base }));
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: hangBound(20_000) });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0); // exits by itself: b's idle wait thread does not keep it alive
    // 42 sockets and the dup b's watch holds; after collection only a, b and that dup remain.
    expect(JSON.parse(r.stdout)).toEqual({ made: 43, left: 3 });
  });
});
