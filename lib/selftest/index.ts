/**
 * kvm-gmem/selftest: qualifying a kernel and host. The facts of this host (capabilities, paging,
 * NUMA), the selftest suite that mirrors the kernel's KVM selftests, its plan, its runner with
 * KTAP and JSON reports, and expectation files. The `kvm-gmem selftest` command is built on it.
 * @module
 */
export { hostInfo, formatHostInfo, hostPaging, numaNodes } from '../host/info.js';
export type { HostInfo, CapabilityInfo, HostPaging } from '../host/info.js';
export { probeHost } from './host.js';
export type { HostFacts, VmTypeFacts } from './host.js';
export { planSelftests, filterCases } from './plan.js';
export { runSelftests, reportJson } from './runner.js';
export type { RunOptions, RunReport, CaseReport } from './runner.js';
export { loadExpectations, parseExpectations } from './expect.js';
export type { Expectation, ExpectationFile } from './expect.js';
export type { CaseResult, Totals } from './ktap.js';
export type { SelftestCase, SelftestGroup, CaseOutcome, CaseVerdict } from './harness.js';
