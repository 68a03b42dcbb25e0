// Workers ended at random points of every blocking call (issue 11): terminate() from outside, or
// process.exit() / an uncaught throw inside, while the Worker waits in send(), receive(),
// accept(), connect(), vcpu.run(), vcpu.runAsync(), or loops over runs and guest_memfd calls.
// Every ending must settle within a bound and leave the process exactly as before: no fd, no
// KVM mapping, no thread; and at the end process.exit() must work with Workers still blocked.
// Endings inside object creation (a Worker's start, creation loops) are regressions.test.ts's.
import { describe, it } from 'vitest';
import { hangBound, openKvm } from '../kvm-host.js';
import { KVM_KINDS, PLAIN_KINDS } from './blocking-worker.js';
import { scaled } from './harness.js';
import { terminateScenario } from './terminate-scenario.js';

/** Rounds per kind of blocking call: each starts a Worker and ends it at a random point. */
const ROUNDS = scaled(1);

describe('Workers ended at random points of blocking calls', () => {
  it(`FdChannel and FdListener calls (${PLAIN_KINDS.join(', ')}): ${ROUNDS} round(s) each`, async (ctx) => {
    await terminateScenario(ctx, 'terminate-plain', PLAIN_KINDS, { rounds: ROUNDS, startupShare: 0 });
  }, hangBound(150_000));

  it(`vCPU runs and guest_memfd loops (${KVM_KINDS.join(', ')}): ${ROUNDS} round(s) each`, async (ctx) => {
    openKvm(ctx).close();
    await terminateScenario(ctx, 'terminate-kvm', KVM_KINDS, { rounds: ROUNDS, startupShare: 0 });
  }, hangBound(150_000));
});
