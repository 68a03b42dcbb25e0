// Issue 11: the kernel creates a guest_memfd without O_CLOEXEC, so a child spawned from another
// thread between KVM_CREATE_GUEST_MEMFD and a later F_SETFD would inherit guest memory. These
// tests race real children against creation and check what creation's error paths leave behind.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, it, onTestFinished } from 'vitest';
import { KvmError, PAGE_SIZE } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { gmemVm, isCloexec, openKvm, thrown } from './kvm-host.js';
import { ROOT } from './paths.js';

/** Children the Worker spawns at most, and for how long (the bound in the TCG VM). */
const MAX_CHILDREN = 200;
const MAX_MS = 20_000;

// The Worker spawns children in a loop. Each is a shell that counts its open fds and, if it has
// more than a child spawned before the race had (stdio, the fd its glob reads /proc/self/fd with,
// and whatever this process inherited itself), execs `ls -l /proc/self/fd` to list them with their
// links: the shell alone is the cheaper child, as exec is slow on the VM's 9p root. A guest_memfd's
// link names kvm-gmem on every kernel ('anon_inode:[kvm-gmem]' before 7.2, '/[kvm-gmem] (deleted)'
// since). state[0] is 2 when the Worker is done.
const COUNT = 'set -- /proc/self/fd/*; echo $#';
const child = (usual: number) => `set -- /proc/self/fd/*; [ $# -le ${usual} ] || exec ls -l /proc/self/fd`;
const WORKER = `
const { spawnSync } = require('node:child_process');
const { parentPort, workerData } = require('node:worker_threads');
const state = new Int32Array(workerData.state);
const end = Date.now() + workerData.ms;
let children = 0;
const seen = [];
let failed = '';
let listed = 0;
while (children < workerData.max && Date.now() < end) {
  const r = spawnSync('/bin/sh', ['-c', workerData.child], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) { failed = String(r.error ?? r.stderr); break; }
  children++;
  if (r.stdout !== '') listed++;
  for (const line of r.stdout.split('\\n')) if (line.includes('kvm-gmem')) seen.push(line);
}
Atomics.store(state, 0, 2);
parentPort.postMessage({ children, listed, seen, failed });
`;

/** Pins every thread of this process to its first allowed CPU; returns the old mask (hex), if taskset ran. */
function pin(): string | undefined {
  const cur = /:\s*([0-9a-f]+)\s*$/.exec(spawnSync('taskset', ['-p', String(process.pid)], { encoding: 'utf8' }).stdout ?? '');
  if (!cur) return undefined;
  const mask = BigInt('0x' + cur[1]!);
  const first = mask & -mask;
  const r = spawnSync('taskset', ['-a', '-p', first.toString(16), String(process.pid)], { stdio: 'ignore' });
  return r.status === 0 ? cur[1]! : undefined;
}

const fdCount = () => readdirSync('/proc/self/fd').length;
const threadCount = () => readdirSync('/proc/self/task').length;

describe('guest_memfd creation and child processes', () => {
  it(`no child spawned from a Worker while guest_memfds are created inherits one (${MAX_CHILDREN} children or ${MAX_MS / 1000} s)`, async (ctx) => {
    using vm = gmemVm(ctx, 0n);
    const usual = Number(spawnSync('/bin/sh', ['-c', COUNT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).stdout);
    expect(usual).toBeGreaterThanOrEqual(4);
    // Every thread of this process (and the Worker and children to come) on one CPU: a child is
    // then forked while the creating thread is preempted, which happens mostly where the kernel
    // returns to user space, such as right after KVM_CREATE_GUEST_MEMFD. That makes the race
    // many times likelier than with the threads on two CPUs, where the creating thread is caught
    // at any instruction. The mask is put back afterwards.
    const mask = pin();
    onTestFinished(() => {
      if (mask) spawnSync('taskset', ['-a', '-p', mask, String(process.pid)], { stdio: 'ignore' });
    });
    const state = new Int32Array(new SharedArrayBuffer(4));
    const w = new Worker(WORKER, { eval: true, workerData: { state: state.buffer, max: MAX_CHILDREN, ms: MAX_MS, child: child(usual) }, execArgv: [] });
    const done = new Promise<{ children: number; listed: number; seen: string[]; failed: string }>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    // The main thread creates and closes guest_memfds until the Worker is done (this loop holds
    // the event loop, so the Worker reports through shared memory). It calls the native function
    // that vm.createGuestMemfd() calls, without the object around it: the tighter the loop, the
    // larger the share of its time an fd spends in the table, so the more children could see one.
    const deadline = Date.now() + MAX_MS + 20_000;
    let created = 0;
    while (Atomics.load(state, 0) !== 2 && Date.now() < deadline) {
      native.close(native.createGuestMemfd(vm.fd, PAGE_SIZE, 0));
      created++;
    }
    const r = await done;
    await w.terminate();
    expect(r.failed).toBe('');
    expect(r.children).toBeGreaterThan(0);
    expect(created).toBeGreaterThan(r.children);
    await ctx.annotate(`${r.children} children (${r.listed} with an fd more than usual), ${created} guest_memfds, ${r.seen.length} seen${mask ? ', pinned to one CPU' : ''}`);
    // listed: children that had an fd more than usual (and so ran ls).
    expect({ pinned: mask !== undefined, children: r.children, listed: r.listed, created, sawGuestMemfd: r.seen.length, first: r.seen.slice(0, 3) })
      .toEqual({ pinned: mask !== undefined, children: r.children, listed: r.listed, created, sawGuestMemfd: 0, first: [] });
  }, MAX_MS + 40_000);

  it('each guest_memfd is close-on-exec, and creation leaves no fd and no thread behind', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    vm.createGuestMemfd({ size: PAGE_SIZE }).close(); // whatever a first call sets up, once
    const fds = fdCount();
    const threads = threadCount();
    for (let i = 0; i < 200; i++) {
      using g = vm.createGuestMemfd({ size: PAGE_SIZE });
      expect(isCloexec(g.fd)).toBe(true);
    }
    expect(fdCount()).toBe(fds);
    expect(threadCount()).toBe(threads);
  });

  it('errors reach JS as the ioctl KvmError they always were, and leak no fd', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    vm.createGuestMemfd({ size: PAGE_SIZE }).close();
    const fds = fdCount();
    const memfd = native.memfdCreate('not-a-vm');
    const closed = 1 << 30; // past any fd table: no file can have this number
    const cases: [string, () => unknown, string][] = [
      ['size 0', () => vm.createGuestMemfd({ size: 0 }), 'EINVAL'],
      ['unaligned size', () => vm.createGuestMemfd({ size: PAGE_SIZE + 1 }), 'EINVAL'],
      ['unknown flag', () => vm.createGuestMemfd({ size: PAGE_SIZE, flags: 1n << 63n }), 'EINVAL'],
      ['a memfd as the VM fd', () => native.createGuestMemfd(memfd, PAGE_SIZE, 0), 'ENOTTY'],
      ['a closed VM fd', () => native.createGuestMemfd(closed, PAGE_SIZE, 0), 'EBADF'],
    ];
    for (let i = 0; i < 50; i++) {
      for (const [what, call, code] of cases) {
        const e = thrown(call);
        expect(e, what).toBeInstanceOf(KvmError);
        expect({ what, code: e.code, syscall: e.syscall, request: e.request })
          .toEqual({ what, code, syscall: 'ioctl', request: 'KVM_CREATE_GUEST_MEMFD' });
      }
    }
    native.close(memfd);
    expect(fdCount()).toBe(fds);
    // Still works after all that.
    vm.createGuestMemfd({ size: PAGE_SIZE }).close();
    expect(fdCount()).toBe(fds);
  });

  it('a thread that cannot be created is a KvmError (EAGAIN, pthread_create), and leaks no fd', (ctx) => {
    openKvm(ctx).close();
    if (process.getuid?.() !== 0) ctx.skip('needs root: the child lowers RLIMIT_NPROC, then drops to nobody so that it applies');
    const nativeJs = join(ROOT, 'dist', 'core', 'native.js');
    expect(existsSync(nativeJs), `${nativeJs}: run \`npm run build\``).toBe(true);
    // The child opens its VM as root, lowers its soft RLIMIT_NPROC to 1 and becomes nobody: from
    // then on the kernel refuses it any new thread (clone: EAGAIN), as a host at its limits would.
    const script = `
      import { native } from ${JSON.stringify(nativeJs)};
      import { readdirSync } from 'node:fs';
      import { spawnSync } from 'node:child_process';
      const vm = native.createVm(native.open('/dev/kvm'), 0);
      native.close(native.createGuestMemfd(vm, 4096, 0));
      const limit = spawnSync('prlimit', ['--nproc=1:unlimited', '--pid', String(process.pid)]).status;
      process.setgid(65534);
      process.setuid(65534);
      const fds = () => readdirSync('/proc/self/fd').length;
      const before = fds();
      const errors = [];
      for (let i = 0; i < 20; i++) {
        try { native.close(native.createGuestMemfd(vm, 4096, 0)); errors.push('created'); }
        catch (e) { errors.push([e.name, e.code, e.syscall, e.request ?? '-'].join(' ')); }
      }
      console.log(JSON.stringify({ limit, errors: [...new Set(errors)], leaked: fds() - before }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ limit: 0, errors: ['KvmError EAGAIN pthread_create -'], leaked: 0 });
  });
});
