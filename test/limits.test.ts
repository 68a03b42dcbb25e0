// Errors at the limits: what the library says when the process runs out of something, instead of
// an untyped error, a wrong one, or an abort.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { FdChannel, MAX_PAYLOAD } from '../lib/index.js';
const MAX_LIVE_MAPPINGS = 32765, MAX_PAYLOAD_DEPTH = 1000;
import { native } from '../lib/native.js';
import { hangBound } from './kvm-host.js';
import { ROOT } from './paths.js';

const lib = JSON.stringify(`${ROOT}dist/index.js`);
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
      import { guestImage } from ${lib};
      try { for (;;) openSync('/dev/null', 'r'); } catch {}
      try { guestImage('hello'); console.log('read'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `, ['prlimit', '--nofile=128:128']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { code: string; message: string };
    expect(out.code).toBe('EMFILE');
    expect(out.message).not.toMatch(/rebuild/);
    expect(out.message).toMatch(/the read failed in this process/);
  });
});
