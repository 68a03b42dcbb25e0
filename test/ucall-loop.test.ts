// The one ucall loop (runUntilUcall): other exits go to onExit, and maxExits bounds a guest that
// never calls. Before, the selftest and the upgrade experiment each had a loop of their own.
import { describe, expect, it } from 'vitest';
import { runUntilUcall, runUntilUcallSync, UnexpectedExitError } from '../lib/guest/index.js';
import type { VcpuExit } from '../lib/index.js';
import { guestVm } from './guest-vm.js';

describe('runUntilUcall', () => {
  it('hands exits that are not calls to onExit, and gives up after maxExits', async (ctx) => {
    using g = guestVm(ctx);
    // port_loop: N OUTs to port 0x10, then HLT; it never makes a ucall.
    const seen: string[] = [];
    const onExit = (e: VcpuExit) => {
      seen.push(e.reason === 'io' ? `io ${e.port}` : e.reason);
      return e.reason === 'io';
    };
    const a = g.boot(0, 'port_loop', [2]);
    const e = await runUntilUcall(a, { onExit }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnexpectedExitError);
    expect((e as UnexpectedExitError).exit.reason).toBe('hlt');
    expect(seen).toEqual(['io 16', 'io 16', 'hlt']);

    const b = g.boot(1, 'port_loop', [5]);
    const stalled = (() => {
      try {
        return runUntilUcallSync(b, { onExit: () => true, maxExits: 3 });
      } catch (x) {
        return x;
      }
    })();
    expect(stalled).toBeInstanceOf(UnexpectedExitError);
    expect((stalled as Error).message).toMatch(/no ucall in 3 exits/);
    expect(b.getRegs().rcx).toBe(3n); // three OUTs done of five: the loop stopped where it said
    expect(() => runUntilUcallSync(b, { maxExits: 0 })).toThrow(RangeError);
  });
});
