/**
 * The plan: every case for this host, in a fixed order (guest_memfd_test, set_memory_region_test,
 * the lifecycle group, then pre_fault_memory_test, private_mem_kvm_exits_test and
 * private_mem_conversions_test), and the --filter that narrows it.
 * @module
 */
import type { SelftestCase } from './harness.js';
import type { HostFacts } from './host.js';
import { guestMemfdCases } from './guest-memfd-test.js';
import { lifecycleCases } from './lifecycle/index.js';
import { setMemoryRegionCases } from './set-memory-region-test.js';
import { preFaultMemoryCases } from './pre-fault-memory-test.js';
import { privateMemKvmExitsCases } from './private-mem-kvm-exits-test.js';
import { privateMemConversionsCases } from './private-mem-conversions-test.js';
import { matchesPattern } from './expect.js';

/** Every case for this host. */
export function planSelftests(host: HostFacts): SelftestCase[] {
  const cases = [
    ...guestMemfdCases(host), ...setMemoryRegionCases(host), ...lifecycleCases(host),
    ...preFaultMemoryCases(host), ...privateMemKvmExitsCases(host), ...privateMemConversionsCases(host),
  ];
  const seen = new Set<string>();
  for (const c of cases) {
    if (seen.has(c.name)) throw new Error(`duplicate selftest case name: ${c.name}`);
    seen.add(c.name);
  }
  return cases;
}

/**
 * Narrows the plan: a pattern with `*` must match a whole name; without, it matches any name
 * that contains it. Several patterns may be given separated by commas (a case is kept if any
 * matches).
 */
export function filterCases(cases: readonly SelftestCase[], filter: string | undefined): SelftestCase[] {
  if (filter === undefined || filter === '') return [...cases];
  const pats = filter.split(',').map((p) => p.trim()).filter((p) => p !== '');
  return cases.filter((c) => pats.some((p) => (p.includes('*') ? matchesPattern(p, c.name) : c.name.includes(p))));
}
