/**
 * What the old VMM, the new VMM and the orchestrator of the live-upgrade experiment share: the
 * guest's memory layout and calls (guest/upgrade.S), the memory pattern, the vCPU state as
 * JSON, the handover message and the messages each VMM process sends its parent.
 * @module
 */
import { GuestMemfdFlag, KvmError, PAGE_SIZE, type CpuidEntry, type Fpu, type Regs, type Sregs, type Vcpu, type VcpuExit } from 'kvm-gmem';
import { CONSOLE_PORT, getUcall, GuestAssertionError, UnexpectedExitError, type Ucall } from 'kvm-gmem/guest';

/** The thread where KVM's maintainer lists three ways a guest_memfd could move to another VM; the kernel does (a): never. */
export const REBIND_THREAD = 'https://lore.kernel.org/all/ZNKv9ul2I7A4V7IF@google.com/';

/** The uapi this library follows (Linux 6.18's KVM header). */
export const UAPI_HEADER = 'https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/include/uapi/linux/kvm.h?h=v6.18';

/** Bytes in a MiB. */
export const MiB = 1024 * 1024;

/**
 * Guest-physical layout of the experiment's VM: one guest_memfd of `size` bytes bound at GPA 0
 * (with its own mapping as userspace_addr), holding everything the guest has: page tables, code,
 * stack, counter and the data region. Copying the file copies the whole guest.
 */
export const Layout = {
  /** The identity-map page tables (PML4, PDPT, one PD per GiB). */
  PAGE_TABLES: 0x1000,
  /** The upgrade.S image (its struct ucall is inside it). */
  IMAGE: 0x10000,
  /** The initial stack pointer (the stack grows down from it). */
  STACK_TOP: 0x90000,
  /** The guest's u64 counter. */
  COUNTER: 0xa0000,
  /** The data region: from here to the end of memory. */
  DATA_BASE: 0x100000,
} as const;

/** The guest's one vCPU, in both VMs: the handover carries its state and its fd. */
export const VCPU_ID = 0;

/** The smallest memory the layout fits in (the data region needs at least a page). */
export const MIN_SIZE = 2 * MiB;

/** The guest_memfd flags of both VMs: the host maps the memory and the guest runs on it. */
export const GMEM_FLAGS = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;

/** args[0] of the guest's SYNC calls (upgrade.S TAG_*). */
export const Tag = { TICK: 1n, FILLED: 2n, VERIFIED: 3n } as const;
/** The host's reply in args[5] (upgrade.S OP_*); args[4] is the stride for VERIFY. */
export const Op = { CONTINUE: 0, VERIFY: 1, DONE: 2 } as const;

/** The guest's register arguments: RDI, RSI, RDX, RCX, R8, R9 of upgrade.S. */
export function guestArgs(size: number, seed: bigint, period: number, guestFills: boolean): bigint[] {
  return [
    BigInt(Layout.DATA_BASE), BigInt(size - Layout.DATA_BASE), seed, BigInt(Layout.COUNTER),
    BigInt(period), guestFills ? 1n : 0n,
  ];
}

/** How many pages the data region of a `size`-byte guest has. */
export function dataPages(size: number): number {
  return (size - Layout.DATA_BASE) / PAGE_SIZE;
}

/** The value every u64 of the page at guest address `gpa` holds: gpa XOR seed. */
export function patternValue(gpa: number, seed: bigint): bigint {
  return BigInt(gpa) ^ seed;
}

/**
 * Writes the pattern over `bytes`, which show guest memory from guest address `gpa` on (both
 * page-aligned): what upgrade.S's fill writes, done by the host.
 */
export function writePattern(bytes: Uint8Array, gpa: number, seed: bigint): void {
  const page = new BigUint64Array(PAGE_SIZE / 8);
  const pageBytes = new Uint8Array(page.buffer);
  for (let off = 0; off < bytes.length; off += PAGE_SIZE) {
    page.fill(patternValue(gpa + off, seed));
    bytes.set(pageBytes, off);
  }
}

/** Where a pattern check found the first u64 that differs. */
export interface PatternMismatch {
  /** Guest address of the u64. */
  gpa: number;
  /** What it holds. */
  actual: bigint;
  /** What the pattern says. */
  expected: bigint;
}

/**
 * Checks `bytes` (guest memory from `gpa` on) against the pattern, page by page (memcmp against a
 * page of the expected value).
 * @returns the first u64 that differs, or undefined if every page holds the pattern
 */
export function checkPattern(bytes: Uint8Array, gpa: number, seed: bigint): PatternMismatch | undefined {
  const page = new BigUint64Array(PAGE_SIZE / 8);
  const expectedPage = Buffer.from(page.buffer);
  const mem = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let off = 0; off < bytes.length; off += PAGE_SIZE) {
    const expected = patternValue(gpa + off, seed);
    page.fill(expected);
    const end = Math.min(off + PAGE_SIZE, bytes.length);
    if (mem.compare(expectedPage, 0, end - off, off, end) === 0) continue;
    const v = new DataView(bytes.buffer, bytes.byteOffset + off, end - off);
    for (let i = 0; i + 8 <= end - off; i += 8) {
      const actual = v.getBigUint64(i, true);
      if (actual !== expected) return { gpa: gpa + off + i, actual, expected };
    }
  }
  return undefined;
}

/** A nanosecond timestamp on CLOCK_MONOTONIC (process.hrtime.bigint()): comparable between processes. */
export function now(): bigint {
  return process.hrtime.bigint();
}

/** Milliseconds from `a` to `b` (nanosecond timestamps). */
export function msBetween(a: bigint | string, b: bigint | string): number {
  return Number(BigInt(b) - BigInt(a)) / 1e6;
}

/** A vCPU's state as KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_FPU read it. */
export interface VcpuState {
  regs: Regs;
  sregs: Sregs;
  fpu: Fpu;
  /** KVM_GET_CPUID2: the CPUID the guest saw (Linux 7.2 refuses long-mode SREGS without it). */
  cpuid: CpuidEntry[];
}

/** {@link VcpuState} as JSON: u64 values as decimal strings, byte arrays as hex. */
export interface VcpuStateJson {
  regs: Record<string, string>;
  sregs: Record<string, unknown>;
  fpu: Record<string, unknown>;
  cpuid: CpuidEntry[];
}

/** Reads a stopped vCPU's state. */
export function readState(vcpu: Vcpu): VcpuState {
  return { regs: vcpu.getRegs(), sregs: vcpu.getSregs(), fpu: vcpu.getFpu(), cpuid: vcpu.getCpuid2() };
}

/**
 * Writes a state read by {@link readState} into another vCPU: CPUID, special registers (CR0, CR4,
 * EFER decide how the rest is taken), then the general-purpose registers and the FPU. MXCSR is
 * not carried by KVM_SET_FPU: the experiment's guest does not use SSE.
 */
export function writeState(vcpu: Vcpu, s: VcpuState): void {
  // CPUID before anything else: it decides which EFER and CR4 bits KVM accepts.
  vcpu.setCpuid2(s.cpuid.length > 0 ? s.cpuid : vcpu.vm.supportedCpuid());
  vcpu.setSregs(s.sregs);
  vcpu.setRegs(s.regs);
  vcpu.setFpu(s.fpu);
}

function jsonify(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  if (Array.isArray(value)) return value.map(jsonify);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonify(v)]));
  }
  return value;
}

/** The state as JSON-able values. */
export function stateToJson(s: VcpuState): VcpuStateJson {
  return jsonify(s) as VcpuStateJson;
}

const U64_SEGMENT_FIELDS = new Set(['base']);

/** Back from {@link stateToJson}; the setters check every field again. */
export function stateFromJson(j: VcpuStateJson): VcpuState {
  const regs = Object.fromEntries(Object.entries(j.regs).map(([k, v]) => [k, BigInt(v)])) as unknown as Regs;
  const sregs: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(j.sregs)) {
    if (typeof v === 'string') sregs[k] = BigInt(v);
    else if (Array.isArray(v)) sregs[k] = v.map((w) => BigInt(w as string));
    else {
      sregs[k] = Object.fromEntries(
        Object.entries(v as Record<string, unknown>).map(([f, x]) => [f, U64_SEGMENT_FIELDS.has(f) ? BigInt(x as string) : x]),
      );
    }
  }
  const f = j.fpu;
  const fpu: Fpu = {
    fpr: new Uint8Array(Buffer.from(f.fpr as string, 'hex')),
    fcw: f.fcw as number,
    fsw: f.fsw as number,
    ftwx: f.ftwx as number,
    lastOpcode: f.lastOpcode as number,
    lastIp: BigInt(f.lastIp as string),
    lastDp: BigInt(f.lastDp as string),
    xmm: new Uint8Array(Buffer.from(f.xmm as string, 'hex')),
    mxcsr: f.mxcsr as number,
  };
  return { regs, sregs: sregs as unknown as Sregs, fpu, cpuid: Array.isArray(j.cpuid) ? j.cpuid : [] };
}

/** What the old VMM sends the new one with the fds (guest_memfd, VM, vCPU, in that order). */
export interface HandoverPayload {
  type: 'handover';
  /** Guest memory size in bytes (the guest_memfd's size). */
  size: number;
  /** The guest_memfd's flags (decimal). */
  flags: string;
  /** The pattern seed (decimal). */
  seed: string;
  /** The guest's tick period. */
  period: number;
  /** The guest's counter when it was paused (decimal). */
  counterAtPause: string;
  /** The vCPU's state at the pause. */
  state: VcpuStateJson;
  /** When the old VMM asked the vCPU to stop, and when it had stopped and its state was read (ns, decimal). */
  pauseStart: string;
  paused: string;
}

/** The new VMM's answer on the channel once it holds the fds. */
export interface HandoverAck {
  type: 'ack';
}

/** How a probe ended: 'ok', the errno code of a KvmError ('EIO', 'EINVAL'), or 'error: ...'. */
export type ProbeAnswer = string;

/** Runs `f` and says how it ended (see {@link ProbeAnswer}). */
export function attempt(f: () => unknown): ProbeAnswer {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof KvmError) return e.code;
    return `error: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/**
 * Runs a vCPU through the guest's calls until it is paused or says DONE. Console output and PRINTF
 * are dropped; an ABORT throws GuestAssertionError, an exit that is not a call
 * UnexpectedExitError.
 *
 * Pausing always ends on a KVM_EXIT_INTR: {@link GuestLoop.pause} kicks the run in flight, and if
 * a call came back instead, the next run starts already kicked (KVM completes the pending port I/O
 * and returns EINTR before entering the guest). So the registers read after a pause never point
 * at an OUT the guest is still waiting on.
 */
export class GuestLoop {
  #stop = false;
  /** The vCPU. */
  readonly vcpu: Vcpu;

  constructor(vcpu: Vcpu) {
    this.vcpu = vcpu;
  }

  /** Asks the loop to stop: kicks the vCPU now (if it is running) and at the next run. */
  pause(): void {
    this.#stop = true;
    this.vcpu.kick();
  }

  /**
   * Runs until paused ('paused') or until the guest's DONE ('done'). `onSync` gets each SYNC
   * (and may write a reply into it) before the next run.
   */
  async run(onSync: (uc: Ucall) => void): Promise<'paused' | 'done'> {
    for (;;) {
      const pending = this.vcpu.runAsync();
      if (this.#stop) this.vcpu.kick();
      const exit: VcpuExit = await pending;
      if (exit.reason === 'intr') {
        if (this.#stop) return 'paused';
        continue;
      }
      if (exit.reason === 'io' && exit.port === CONSOLE_PORT && exit.direction === 'out') continue;
      const uc = getUcall(this.vcpu, exit);
      if (uc === undefined) throw new UnexpectedExitError(exit);
      if (uc.cmd === 'printf') continue;
      if (uc.cmd === 'abort') throw new GuestAssertionError(uc);
      if (uc.cmd === 'done') return 'done';
      onSync(uc);
    }
  }
}

/** Who wrote the pattern into the data region before the handover. */
export type FilledBy = 'guest' | 'host';

/** The old VMM's job (JSON in argv[2]). */
export interface OldVmmConfig {
  /** Guest memory in bytes: a multiple of 2 MiB, at least {@link MIN_SIZE}. */
  size: number;
  /** The pattern seed (decimal). */
  seed: string;
  /** Guest steps between two ticks. */
  period: number;
  /** Whether the guest fills the data region (else the old VMM writes the pattern before boot). */
  guestFills: boolean;
  /** Ticks to see before reporting ready. */
  readyTicks: number;
  /** How long to wait for the new VMM's ack after sending, in ms. */
  ackTimeoutMs: number;
}

/** The new VMM's job (JSON in argv[2]). */
export interface NewVmmConfig {
  /** Guest memory in bytes (the handover must agree). */
  size: number;
  /** Every how many pages the guest checks the data region after the takeover (1: all). */
  verifyStride: number;
  /** How long the guest keeps running after the old VMM exited, in ms. */
  afterMs: number;
  /** How long to wait for the handover, in ms (from ready). */
  receiveTimeoutMs: number;
  /** How long to wait for the orchestrator to say the old VMM exited, in ms. */
  oldExitTimeoutMs: number;
  /** KVM_CHECK_EXTENSION is asked for every capability number below this. */
  capLimit: number;
}

/** The old VMM's report once its guest runs (IPC). */
export interface OldReady {
  type: 'ready';
  filledBy: FilledBy;
  /** Time to fill the data region (guest: boot to its FILLED call; host: the write). */
  fillMs: number;
  /** Pages the guest reported filling (0 when the host did). */
  pagesFilled: number;
  /** Ticks seen, and the counter at the last. */
  ticks: number;
  counter: string;
  /** Milliseconds per tick, from the ticks seen. */
  msPerTick: number;
}

/** The old VMM's report once the handover message is sent (IPC). Timestamps: ns, decimal. */
export interface OldSent {
  type: 'sent';
  pauseStart: string;
  paused: string;
  sent: string;
  counterAtPause: string;
  /** The guest's RIP at the pause (hex). */
  rip: string;
}

/** The old VMM's report once the new one acknowledged (IPC), just before it exits. */
export interface OldAcked {
  type: 'acked';
  at: string;
}

/** The new VMM's report once it is prepared (IPC). */
export interface NewReady {
  type: 'ready';
  /** Opening /dev/kvm, creating the VM, its guest_memfd (allocated and mapped) and the probe VM. */
  prepareMs: number;
}

/** The new VMM's report once its guest runs again (IPC). Timestamps: ns, decimal. */
export interface NewResumed {
  type: 'resumed';
  received: string;
  copied: string;
  restored: string;
  resumed: string;
  bytesCopied: number;
  /** The counter in the new VM's memory at the resume (= the counter at the pause). */
  counterAtResume: string;
  /** The restore's parts: KVM_SET_USER_MEMORY_REGION2, KVM_CREATE_VCPU, KVM_SET_SREGS/REGS/FPU (ms). */
  restoreParts: { bindMs: number; vcpuMs: number; stateMs: number };
}

/** What the new VMM found about the received fds (each answer per {@link attempt}). */
export interface Probes {
  /** The kinds of the fds received, in order (expected guest_memfd, vm, vcpu). */
  receivedKinds: string[];
  /** mmap of the received guest_memfd in the new process. */
  mapReceived: ProbeAnswer;
  /** Host check of the received memory's data region against the pattern: 'intact' or where it differs. */
  receivedMemory: string;
  /** Host compare of the new guest_memfd's data region with the received one after the copy: 'equal' or where it differs. */
  copyCompare: string;
  /** KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD) on the received VM fd (EIO expected). */
  vmCheckExtension: ProbeAnswer;
  /** KVM_CREATE_GUEST_MEMFD on the received VM fd (EIO expected). */
  vmCreateGuestMemfd: ProbeAnswer;
  /** KVM_GET_REGS on the received vCPU fd (EIO expected). */
  vcpuGetRegs: ProbeAnswer;
  /** KVM_SET_USER_MEMORY_REGION2 binding the received guest_memfd into a new VM (EINVAL expected). */
  bindReceivedToNewVm: ProbeAnswer;
  /** Control: the takeover VM binding its own guest_memfd ('ok'). */
  bindOwnToNewVm: ProbeAnswer;
}

/** Whether this kernel offers a way to hand a guest_memfd to another VM. */
export interface RebindSurvey {
  /** What the uapi the library follows says. */
  uapi: string;
  /** Capability numbers asked: [0, capLimit). */
  capLimit: number;
  /** The highest KVM_CAP_* number in that uapi. */
  lastKnownCap: number;
  /** Capability numbers that answered non-zero, on /dev/kvm and on a new VM. */
  nonzero: { system: number[]; vm: number[] };
  /** Those above lastKnownCap, with their answers: what a newer (rebinding) kernel would add. */
  unknown: { system: [number, number][]; vm: [number, number][] };
  /** KVM_CAP_GUEST_MEMFD_FLAGS on /dev/kvm and on a new VM, and the bits beyond MMAP|INIT_SHARED (hex). */
  gmemFlags: { system: number; vm: number; unknownBits: string };
  /** True if anything above hints at a rebinding interface. */
  anyWay: boolean;
}

/** The new VMM's final report (IPC). */
export interface NewResult {
  type: 'result';
  probes: Probes;
  rebind: RebindSurvey;
  /** Host-side checks' time (received memory and the copy), ms. */
  hostCheckMs: number;
  /** The guest's check after the resume. */
  guestVerify: { stride: number; pages: number; pagesTotal: number; ms: number };
  /** The counter at the first tick after the resume, and at the last tick. */
  counterFirstTick: string;
  counterLast: string;
  /** Ticks after the resume, and after the orchestrator said the old VMM had exited. */
  ticks: number;
  ticksAfterOldExit: number;
  /** The last tick's time after the old VMM's exit, ms. */
  ranAfterOldExitMs: number;
  /** Whether the guest ended with DONE when asked. */
  done: boolean;
}

/** Messages from a VMM process to the orchestrator (Node IPC). */
export type VmmMessage =
  | OldReady | OldSent | OldAcked | NewReady | NewResumed | NewResult
  | { type: 'error'; message: string; stack?: string | undefined };

/** Messages from the orchestrator to a VMM process. */
export type ControlMessage = { type: 'pause' } | { type: 'old-exited'; at: string };

/**
 * The common frame of both VMM entry points: runs `main` and reports an error to the parent.
 * `process.send` must exist (the process was spawned with an 'ipc' stdio entry).
 */
export function vmmEntry(name: string, main: () => Promise<void>): void {
  if (typeof process.send !== 'function') {
    process.stderr.write(`${name}: run by \`npm run upgrade-experiment\` (needs an IPC channel to its parent)\n`);
    process.exit(2);
  }
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      process.send!({ type: 'error', message: err.message, stack: err.stack } satisfies VmmMessage, () => process.exit(1));
    },
  );
}

/** Sends a message to the parent; resolves once it is written. */
export function tell(msg: VmmMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    process.send!(msg, (err: Error | null) => (err ? reject(err) : resolve()));
  });
}

/** Resolves with the next control message of `type` from the parent, or rejects after `timeoutMs`. */
export function control<T extends ControlMessage['type']>(type: T, timeoutMs: number): Promise<Extract<ControlMessage, { type: T }>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      process.off('message', on);
      reject(new Error(`no '${type}' from the orchestrator within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (m: unknown) => {
      if ((m as ControlMessage | undefined)?.type !== type) return;
      clearTimeout(timer);
      process.off('message', on);
      resolve(m as Extract<ControlMessage, { type: T }>);
    };
    process.on('message', on);
  });
}

/** Writes a progress line to stderr (the orchestrator shows it with --verbose, or on failure). */
export function logLine(who: string, text: string): void {
  process.stderr.write(`[${who} ${process.pid}] ${text}\n`);
}
