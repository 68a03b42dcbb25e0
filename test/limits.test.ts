// Errors at the limits: what the library says when the process runs out of something, instead of
// an untyped error, a wrong one, or an abort.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { FdChannel, MAX_PAYLOAD, MAX_PAYLOAD_DEPTH } from '../lib/ipc/index.js';
import { MAX_LIVE_MAPPINGS } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { hangBound, openKvm } from './kvm-host.js';
import { ROOT } from './paths.js';

const lib = JSON.stringify(`${ROOT}dist/index.js`);
const guestLib = JSON.stringify(`${ROOT}dist/guest/index.js`);
const ipcLib = JSON.stringify(`${ROOT}dist/ipc/index.js`);
const nativeLib = JSON.stringify(`${ROOT}dist/core/native.js`);
const run = (script: string, prefix: string[] = []) =>
  spawnSync(prefix[0] ?? process.execPath, [...prefix.slice(1), ...(prefix.length ? [process.execPath] : []), '--input-type=module', '-e', script], {
    encoding: 'utf8', timeout: hangBound(60_000),
  });

describe('limits', () => {
  it('refuses a mapping past MAX_LIVE_MAPPINGS with ERR_KVM_MAPPING_LIMIT, and the process lives on', () => {
    // Before the cap: mmap failed with ENOMEM near vm.max_map_count, and V8 aborted on its own next mmap.
    const r = run(`
      import { Mapping } from ${lib};
      const keep = [];
      let code;
      try { for (;;) keep.push(Mapping.anonymous(4096)); } catch (e) { code = e.code; }
      const more = new Array(1e5).fill(1).map((x, i) => ({ i })); // V8 still allocates
      console.log(JSON.stringify({ made: keep.length, code, more: more.length }));
    `);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ made: MAX_LIVE_MAPPINGS, code: 'ERR_KVM_MAPPING_LIMIT', more: 1e5 });
  });

  it('refuses a payload nested deeper than MAX_PAYLOAD_DEPTH (ERR_KVM_BAD_MESSAGE), from a peer that is not the library', async () => {
    const [a, b] = FdChannel.pair();
    try {
      const deep = '['.repeat(30_000) + ']'.repeat(30_000);
      expect(deep.length).toBeLessThan(MAX_PAYLOAD);
      native.sendMsg(a.fd, new TextEncoder().encode(deep), [], 1000); // the raw wire: no JSON.stringify here
      await expect(b.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_BAD_MESSAGE' });
      const ok = '['.repeat(MAX_PAYLOAD_DEPTH) + ']'.repeat(MAX_PAYLOAD_DEPTH);
      native.sendMsg(a.fd, new TextEncoder().encode(ok), [], 1000);
      using msg = await b.receive({ timeoutMs: 5000 });
      expect(JSON.stringify(msg.payload)).toBe(ok); // as deep as allowed, and usable
    } finally {
      a.close();
      b.close();
    }
  });

  it('guestImage() under EMFILE says so, not "rebuild"', () => {
    const r = run(`
      import { openSync } from 'node:fs';
      import { guestImage } from ${guestLib};
      try { for (;;) openSync('/dev/null', 'r'); } catch {}
      try { guestImage('hello'); console.log('read'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `, ['prlimit', '--nofile=128:128']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { code: string; message: string };
    expect(out.code).toBe('EMFILE');
    expect(out.message).not.toMatch(/rebuild/);
    expect(out.message).toMatch(/the read failed in this process/);
  });

  // A child whose address-space limit leaves no room for an 8 MiB thread stack: pthread_create
  // fails with EAGAIN there, as it does when a pids cgroup or the memory runs out.
  const noThreads = `
    import { spawnSync } from 'node:child_process';
    import { readFileSync } from 'node:fs';
    const vmSize = () => Number(/^VmSize:\\s+(\\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
    const limitAs = (v) => {
      const r = spawnSync('prlimit', ['--as=' + v + ':unlimited', '--pid', String(process.pid)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error('prlimit: ' + r.stderr);
    };
    const noThreads = async (f) => {
      limitAs(vmSize() + (4 << 20));
      try { await f(); return 'no error'; } catch (e) { return { name: e.name, code: e.code, syscall: e.syscall }; }
      finally { limitAs('unlimited'); }
    };
  `;

  it('a receive with no thread left rejects with KvmError EAGAIN (pthread_create), and works once threads are back', () => {
    const r = run(`${noThreads}
      import { FdChannel } from ${ipcLib};
      const [a, b] = FdChannel.pair();
      const err = await noThreads(() => b.receive({ timeoutMs: 100 }));
      a.send({ after: 1 });
      const m = await b.receive({ timeoutMs: 5000 });
      console.log(JSON.stringify({ err, payload: m.payload }));
    `);
    expect(r.status, r.stderr).toBe(0);
    // Before: a plain Error "cannot start the fd watch thread" with no code.
    expect(JSON.parse(r.stdout)).toEqual({ err: { name: 'KvmError', code: 'EAGAIN', syscall: 'pthread_create' }, payload: { after: 1 } });
  });

  it('runAsync() with no thread left rejects with KvmError EAGAIN (pthread_create), and runs once threads are back', (ctx) => {
    openKvm(ctx).close();
    const r = run(`${noThreads}
      import { Kvm } from ${lib};
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      const vcpu = vm.createVcpu(0);
      const err = await noThreads(() => vcpu.runAsync());
      // The same vCPU starts its thread later: a HLT guest exits at once.
      const exit = await vcpu.runAsync().then((x) => x.reason, (e) => 'threw ' + e.code);
      console.log(JSON.stringify({ err, started: !String(exit).startsWith('threw') }));
    `);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ err: { name: 'KvmError', code: 'EAGAIN', syscall: 'pthread_create' }, started: true });
  });

  it('an empty message from a live peer is ERR_KVM_BAD_MESSAGE, not the peer closing; the channel goes on', async () => {
    const [a, b] = FdChannel.pair();
    try {
      native.sendMsg(a.fd, new Uint8Array(0), [], 1000); // the raw wire: a 0-byte SEQPACKET message
      // Before: ERR_KVM_PEER_CLOSED, though the peer was still there.
      await expect(b.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_BAD_MESSAGE' });
      a.send({ next: 2 });
      const m = await b.receive({ timeoutMs: 5000 });
      expect(m.payload).toEqual({ next: 2 });
      a.close();
      await expect(b.receive({ timeoutMs: 5000 })).rejects.toMatchObject({ code: 'ERR_KVM_PEER_CLOSED' });
    } finally {
      a.close();
      b.close();
    }
  });

  it('EMFILE while a message\'s fds are installed is KvmError EMFILE, no fd is left behind, and the next message arrives', () => {
    const r = run(`
      import { openSync, closeSync, readdirSync } from 'node:fs';
      import { FdChannel } from ${ipcLib};
      import { native } from ${nativeLib};
      const count = () => readdirSync('/proc/self/fd').length;
      const [a, b] = FdChannel.pair();
      const carried = Array.from({ length: 8 }, () => openSync('/dev/null', 'r'));
      native.sendMsg(a.fd, new TextEncoder().encode('{"n":1}'), carried, 1000);
      native.sendMsg(a.fd, new TextEncoder().encode('{"n":2}'), carried.slice(0, 1), 1000);
      const filler = [];
      try { for (;;) filler.push(openSync('/dev/null', 'r')); } catch {}
      for (const fd of filler.splice(0, 3)) closeSync(fd); // room for 3 of the 8
      const before = count();
      const err = await b.receive({ timeoutMs: 5000 }).then(() => 'received', (e) => ({ name: e.name, code: e.code, syscall: e.syscall }));
      const leaked = count() - before;
      for (const fd of filler) closeSync(fd);
      const m = await b.receive({ timeoutMs: 5000 });
      console.log(JSON.stringify({ err, leaked, next: m.payload, fds: m.fds.length }));
    `, ['prlimit', '--nofile=256:256']);
    expect(r.status, r.stderr).toBe(0);
    // Before: ERR_KVM_CONTROL_TRUNCATED, "more fds than maxFds", with maxFds at 253.
    expect(JSON.parse(r.stdout)).toEqual({ err: { name: 'KvmError', code: 'EMFILE', syscall: 'recvmsg' }, leaked: 0, next: { n: 2 }, fds: 1 });
  });

  it('createVcpu() under EMFILE does not use up the id: the retry makes that vCPU', (ctx) => {
    openKvm(ctx).close();
    const r = run(`
      import { openSync, closeSync } from 'node:fs';
      import { Kvm } from ${lib};
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      const filler = [];
      const fill = () => { try { for (;;) filler.push(openSync('/dev/null', 'r')); } catch {} };
      const attempt = (id) => { try { const v = vm.createVcpu(id); v.close(); return 'made'; } catch (e) { return e.code; } };
      const results = [];
      // 0 free: KVM_CREATE_VCPU itself fails. 1 free: the kernel makes the vCPU, then the library
      // has no fd left for its own use of it (a vCPU is never destroyed: the id is taken).
      for (const free of [0, 1]) {
        const id = 10 + free;
        fill();
        for (const fd of filler.splice(0, free)) closeSync(fd);
        results.push(attempt(id));
        for (const fd of filler.splice(0, 16)) closeSync(fd);
        results.push(attempt(id));
      }
      console.log(JSON.stringify(results));
    `, ['prlimit', '--nofile=256:256']);
    expect(r.status, r.stderr).toBe(0);
    // Before: the retry after the second EMFILE gave EEXIST.
    expect(JSON.parse(r.stdout)).toEqual(['EMFILE', 'made', 'EMFILE', 'made']);
  });
});
