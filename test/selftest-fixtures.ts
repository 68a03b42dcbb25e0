// Synthetic selftest hosts and cases, for the tests of the runner and of its KTAP (no kernel claims).
import { KVM_DEVICE } from '../lib/index.js';
import type { SelftestCase } from '../lib/selftest/harness.js';
import type { HostFacts } from '../lib/selftest/host.js';

/** A kvm_pvm-like host, with KVM or (available = false) without it. */
export const host = (available = true): HostFacts => ({
  device: KVM_DEVICE, kernel: 'test', release: '6.18.44-test', available, guestMemfd: 1, userMemory2: 1, systemGmemFlags: 3n,
  memoryAttributes: 0, vmTypesCap: 1, vmTypes: [], paging: { mode: 'shadow', source: 'test', module: 'kvm_pvm' }, numaNodes: [0],
  pageSize: 4096, ...(available ? {} : { unavailableReason: 'no KVM here' }),
});

/** A lifecycle case named `name` that runs `run`. */
export const mk = (name: string, run: SelftestCase['run'], extra: Partial<SelftestCase> = {}): SelftestCase =>
  ({ name, group: 'lifecycle', source: 'test', summary: 'synthetic', run, ...extra });
