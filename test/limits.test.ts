// Errors at the limits: what the library says when the process runs out of something, instead of
// an untyped error, a wrong one, or an abort. (EMFILE while receiving or making a vCPU, and an
// empty message, are reliability/regressions.test.ts's items 2 to 4.)
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
});
