/**
 * Known host limitations: a test written for the upstream kernel's behaviour that cannot pass on
 * a host of some kind is registered with `itUpstream`. Where the limitation applies it runs as an
 * expected failure (vitest's `it.fails`: it must fail, and passing is reported as a failure, so a
 * host that gains the behaviour is noticed); the summary reporter lists it with the reason. It is
 * never skipped and never made to pass.
 */
import { it, type TestContext } from 'vitest';
import { hostPaging } from '../lib/index.js';

/** A host limitation: when it applies, and why the upstream behaviour cannot be seen. */
export interface Limitation {
  id: string;
  applies: () => boolean;
  reason: string;
}

const paging = hostPaging();

/** Guest accesses to a memslot bound with no userspace_addr ("guest_memfd only"). */
export const SHADOW_PAGING_GMEM_ONLY: Limitation = {
  id: 'shadow-paging-gmem-only-memslot',
  applies: () => paging.mode === 'shadow',
  reason: `this host's KVM uses shadow paging (${paging.source}): it reads guest page tables and emulates ` +
    'accesses through the memslot\'s userspace address, which a guest_memfd-only memslot does not have',
};

/** The marker the summary reporter looks for in a test's name. */
export const XFAIL_MARK = ' [expected failure on this host: ';

/** A test of upstream behaviour; an expected failure where `limitation` applies. */
export function itUpstream(name: string, limitation: Limitation, fn: (ctx: TestContext) => unknown): void {
  if (limitation.applies()) it.fails(`${name}${XFAIL_MARK}${limitation.reason}]`, fn);
  else it(name, fn);
}
