/**
 * What `kvm-gmem info` reports about a host: the first thing to run on a new machine.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { arch, release } from 'node:os';
import { Cap, GuestMemfdFlag, VmType, decodeBits, type CapName } from '../core/constants.js';
import { KvmError, diagnoseKvmDevice, type KvmDeviceFacts } from '../core/errors.js';
import { Kvm, KVM_DEVICE } from '../kvm/kvm.js';
import type { Vm } from '../kvm/vm.js';

/** One capability as the system fd and a default VM report it. */
export interface CapabilityInfo {
  /** The Cap name, e.g. 'GUEST_MEMFD'. */
  name: CapName;
  /** The KVM_CAP_* number. */
  number: number;
  /** KVM_CHECK_EXTENSION on /dev/kvm, or null if it could not be asked. */
  system: number | null;
  /** KVM_CHECK_EXTENSION on a default VM, or null if no VM could be created. */
  vm: number | null;
  /**
   * KVM_CHECK_EXTENSION on a VM of each other type the host offers, by VmType name (e.g.
   * `{ SW_PROTECTED: 8 }` for MEMORY_ATTRIBUTES): some answers depend on the type, and /dev/kvm
   * gives the union. null where no VM of that type could be created.
   */
  byVmType: Record<string, number | null>;
}

/** The host report. */
export interface HostInfo {
  /** The device path asked. */
  device: string;
  /** uname release and machine. */
  kernel: string;
  /** Node's process.arch. */
  arch: string;
  /** Whether this process could open the device. */
  canOpen: boolean;
  /** Why it could not, with what to do, when canOpen is false. */
  openError?: {
    /** The errno name ('ENOENT', 'EACCES'...). */
    code: string;
    /** The error's message (with the hint at its end). */
    message: string;
    /** What is wrong on this host and the command that fixes it, when known. */
    hint?: string;
    /** What the hint was made from: the node, the KVM modules, the CPU, this user's groups. */
    device?: KvmDeviceFacts;
  };
  /** KVM_GET_API_VERSION. */
  apiVersion?: number;
  /** Every named capability. */
  capabilities: CapabilityInfo[];
  /** Cap.VM_TYPES decoded into VmType names. */
  vmTypes?: { value: number; names: string[] };
  /** Cap.GUEST_MEMFD_FLAGS (asked on a default VM) decoded into GuestMemfdFlag names. */
  guestMemfdFlags?: { value: number; names: string[] };
  /** Cap.NR_MEMSLOTS: memslots per address space. */
  memslots?: number;
  /** Why the per-VM column is empty, if it is. */
  vmError?: string;
  /** Why a column of another VM type is empty, by VmType name. */
  vmTypeErrors?: Record<string, string>;
  /** How KVM maps guest memory here (see {@link hostPaging}). */
  paging: HostPaging;
}

/** How the host's KVM translates guest memory: what decides some guest_memfd behaviours. */
export interface HostPaging {
  /**
   * 'tdp': two-dimensional paging (EPT/NPT) — guest page faults are resolved from the memslot,
   * guest_memfd included. 'shadow': KVM shadows the guest's page tables, reading them (and
   * emulating some accesses) through the memslot's userspace address. 'unknown': no module
   * parameter said.
   */
  mode: 'tdp' | 'shadow' | 'unknown';
  /** What decided it, e.g. '/sys/module/kvm_intel/parameters/ept = Y'. */
  source: string;
  /** The KVM vendor module loaded: 'kvm_intel', 'kvm_amd', 'kvm_pvm', or undefined if none is. */
  module?: 'kvm_intel' | 'kvm_amd' | 'kvm_pvm';
}

/**
 * Tells shadow paging from TDP by the KVM modules' parameters: kvm_intel's `ept`, kvm_amd's `npt`,
 * and kvm_pvm (the PVM hypervisor, which always shadows guest page tables).
 */
export function hostPaging(sysModule = '/sys/module'): HostPaging {
  const read = (p: string) => {
    try {
      return readFileSync(`${sysModule}/${p}`, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  for (const [mod, param] of [['kvm_intel', 'ept'], ['kvm_amd', 'npt']] as const) {
    const v = read(`${mod}/parameters/${param}`);
    if (v !== undefined) {
      return { mode: v === 'Y' || v === '1' ? 'tdp' : 'shadow', source: `${sysModule}/${mod}/parameters/${param} = ${v}`, module: mod };
    }
  }
  if (existsSync(`${sysModule}/kvm_pvm`)) {
    return { mode: 'shadow', source: `${sysModule}/kvm_pvm (PVM shadows guest page tables)`, module: 'kvm_pvm' };
  }
  return { mode: 'unknown', source: `no kvm_intel, kvm_amd or kvm_pvm module under ${sysModule}` };
}

/**
 * The online NUMA nodes, from /sys/devices/system/node/online (a list of ranges like "0-1,3"),
 * in ascending order. A kernel without NUMA support has no such file: that is one node, [0].
 * @throws Error if the file exists but cannot be parsed
 */
export function numaNodes(path = '/sys/devices/system/node/online'): number[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [0];
    throw e;
  }
  return parseNodeList(text, path);
}

/** Parses a kernel node/CPU list ("0-1,3", "" for none) into ascending numbers. */
export function parseNodeList(text: string, source = 'node list'): number[] {
  const nodes = new Set<number>();
  for (const part of text.trim().split(',')) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    const lo = m ? Number(m[1]) : NaN;
    const hi = m?.[2] !== undefined ? Number(m[2]) : lo;
    if (!m || hi < lo) throw new Error(`${source}: cannot parse "${text}"`);
    for (let n = lo; n <= hi; n++) nodes.add(n);
  }
  return [...nodes].sort((a, b) => a - b);
}

/**
 * Opens the device, asks every named capability on it and on a fresh default VM, and
 * closes everything again. Never throws for a missing or forbidden device: that is reported
 * in `canOpen` / `openError`.
 */
export function hostInfo(device: string = KVM_DEVICE): HostInfo {
  const info: HostInfo = { device, kernel: release(), arch: arch(), canOpen: false, capabilities: [], paging: hostPaging() };
  let kvm: Kvm;
  try {
    kvm = Kvm.open(device);
  } catch (e) {
    const err = e as Error & { code?: string };
    info.openError = {
      code: err.code ?? 'ERROR', message: err.message,
      ...(e instanceof KvmError && e.hint !== undefined ? { hint: e.hint } : {}),
      ...(e instanceof KvmError && e.syscall === 'open' ? { device: diagnoseKvmDevice(device, e.code).facts } : {}),
    };
    return info;
  }
  using k = kvm;
  info.canOpen = true;
  info.apiVersion = k.apiVersion;
  let vm: Vm | undefined;
  try {
    vm = k.createVm(VmType.DEFAULT);
  } catch (e) {
    info.vmError = e instanceof KvmError ? e.message : String(e);
  }
  // Every other VM type the host offers gets its own column.
  const others = new Map<string, Vm | null>();
  const offered = ask(() => k.checkExtension(Cap.VM_TYPES)) ?? 0;
  for (const [typeName, t] of Object.entries(VmType)) {
    if (t === VmType.DEFAULT || !(offered & (1 << t))) continue;
    try {
      others.set(typeName, k.createVm(t));
    } catch (e) {
      others.set(typeName, null);
      (info.vmTypeErrors ??= {})[typeName] = e instanceof KvmError ? e.message : String(e);
    }
  }
  try {
    for (const [name, number] of Object.entries(Cap) as [CapName, number][]) {
      const byVmType: Record<string, number | null> = {};
      for (const [typeName, other] of others) byVmType[typeName] = other ? ask(() => other.checkExtension(number)) : null;
      info.capabilities.push({ name, number, system: ask(() => k.checkExtension(number)), vm: vm ? ask(() => vm.checkExtension(number)) : null, byVmType });
    }
  } finally {
    vm?.close();
    for (const other of others.values()) other?.close();
  }
  const value = (name: CapName, where: 'system' | 'vm') =>
    info.capabilities.find((c) => c.name === name)?.[where] ?? null;
  const types = value('VM_TYPES', 'system');
  if (types !== null) {
    const table = Object.fromEntries(Object.entries(VmType).map(([n, t]) => [n, 1 << t]));
    // KVM_CAP_VM_TYPES returns 0 on kernels that only know the default type.
    info.vmTypes = { value: types, names: types === 0 ? ['DEFAULT'] : decodeBits(types, table) };
  }
  const flags = value('GUEST_MEMFD_FLAGS', 'vm') ?? value('GUEST_MEMFD_FLAGS', 'system');
  if (flags !== null) info.guestMemfdFlags = { value: flags, names: decodeBits(flags, GuestMemfdFlag) };
  const slots = value('NR_MEMSLOTS', 'vm') ?? value('NR_MEMSLOTS', 'system');
  if (slots !== null) info.memslots = slots;
  return info;
}

function ask(f: () => number): number | null {
  try {
    return f();
  } catch {
    return null;
  }
}

/** Formats a HostInfo as the human-readable report `kvm-gmem info` prints. */
export function formatHostInfo(info: HostInfo): string {
  const lines: string[] = [];
  lines.push(`kernel        ${info.kernel} (${info.arch})`);
  lines.push(`device        ${info.device}: ${info.canOpen ? 'opened by this process' : 'cannot be opened'}`);
  if (!info.canOpen) {
    const err = info.openError;
    const hint = err?.hint;
    const message = err?.message ?? 'unknown error';
    lines.push(`              ${hint !== undefined && message.endsWith(`. ${hint}`) ? message.slice(0, -hint.length - 2) : message}`);
    if (hint !== undefined) lines.push(`hint          ${hint}`);
    return lines.join('\n') + '\n';
  }
  lines.push(`api version   ${info.apiVersion ?? 'unknown'}`);
  if (info.vmTypes) lines.push(`vm types      ${info.vmTypes.names.join(', ')} (0x${info.vmTypes.value.toString(16)})`);
  if (info.guestMemfdFlags) {
    const names = info.guestMemfdFlags.names.length ? info.guestMemfdFlags.names.join(' | ') : 'none';
    lines.push(`gmem flags    ${names} (0x${info.guestMemfdFlags.value.toString(16)})`);
  }
  if (info.memslots !== undefined) lines.push(`memslots      ${info.memslots}`);
  lines.push(`paging        ${info.paging.mode} (${info.paging.source})`);
  if (info.vmError) lines.push(`vm            could not create a default VM: ${info.vmError}`);
  for (const [typeName, err] of Object.entries(info.vmTypeErrors ?? {})) lines.push(`vm            could not create a ${typeName} VM: ${err}`);
  const typeNames = Object.keys(info.capabilities[0]?.byVmType ?? {});
  lines.push('');
  lines.push(`capability                 num    system        vm${typeNames.map((n) => ` ${n.padStart(Math.max(9, n.length))}`).join('')}`);
  for (const c of info.capabilities) {
    const show = (v: number | null | undefined) => (v === null || v === undefined ? '-' : String(v));
    const more = typeNames.map((n) => ` ${show(c.byVmType[n]).padStart(Math.max(9, n.length))}`).join('');
    lines.push(`${c.name.padEnd(24)} ${String(c.number).padStart(5)} ${show(c.system).padStart(9)} ${show(c.vm).padStart(9)}${more}`);
  }
  return lines.join('\n') + '\n';
}
