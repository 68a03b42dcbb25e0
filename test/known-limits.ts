/**
 * Known host limitations: a test written for the upstream kernel's behaviour that cannot pass on
 * a host of some kind is registered with `itUpstream`. Where the limitation applies it runs as an
 * expected failure (vitest's `it.fails`: it must fail, and passing is reported as a failure, so a
 * host that gains the behaviour is noticed); the summary reporter lists it with the reason. It is
 * never skipped and never made to pass.
 */
import { it, type TestContext } from 'vitest';
import { hostPaging } from '../lib/selftest/index.js';

/** A host limitation: when it applies, and why the upstream behaviour cannot be seen. */
export interface Limitation {
  id: string;
  applies: () => boolean;
  reason: string;
}

const paging = hostPaging();

/**
 * Guest data accesses to a memslot bound with no userspace_addr ("guest_memfd only"): kvm_pvm
 * emulates them through the memslot's userspace address, which such a slot does not have, and
 * exits as MMIO. Standard KVM serves them from the guest_memfd, with TDP and with shadow paging.
 */
export const PVM_GMEM_ONLY_DATA: Limitation = {
  id: 'pvm-gmem-only-memslot-data',
  applies: () => paging.module === 'kvm_pvm',
  reason: `this host's KVM is kvm_pvm (${paging.source}): it reaches guest memory through the memslot's ` +
    'userspace address, which a guest_memfd-only memslot does not have',
};

/**
 * Guest page tables inside a guest_memfd-only memslot: a shadow-paging KVM (kvm_pvm, kvm_amd
 * npt=0, kvm_intel ept=0) reads them through the memslot's userspace address to build its shadow
 * tables; without one the guest's first fetch ends in a shutdown.
 */
export const SHADOW_GMEM_ONLY_PAGE_TABLES: Limitation = {
  id: 'shadow-paging-gmem-only-page-tables',
  applies: () => paging.mode === 'shadow',
  reason: `this host's KVM uses shadow paging (${paging.source}): it walks guest page tables through the ` +
    'memslot\'s userspace address, which a guest_memfd-only memslot does not have',
};

/** The marker the summary reporter looks for in a test's name. */
export const XFAIL_MARK = ' [expected failure on this host: ';

/** A test of upstream behaviour; an expected failure where `limitation` applies. */
export function itUpstream(name: string, limitation: Limitation, fn: (ctx: TestContext) => unknown): void {
  if (limitation.applies()) it.fails(`${name}${XFAIL_MARK}${limitation.reason}]`, fn);
  else it(name, fn);
}
