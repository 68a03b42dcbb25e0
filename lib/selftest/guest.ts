/**
 * Guests for the selftests. Like the kernel selftests' default VM shape: slot 0 is ordinary
 * anonymous memory holding the page tables, the guest code and the stacks, so that what a case
 * tests (guest_memfd slots at other addresses) is the only guest_memfd memory in the VM.
 *
 * Guest-physical layout of slot 0 (2 MiB):
 *   0x1000 .. 0x10000    page tables (identity map of `identityMapSize` and the extra mappings,
 *                        2 MiB pages; at most 15 pages, e.g. 5 GiB identity-mapped and one
 *                        extra mapping past 512 GiB take 9)
 *   0x10000 * (1 + i)    vCPU i's copy of its image (each copy has its own struct ucall)
 *   0x90000 + 0x10000*i  vCPU i's stack top (i < 8)
 * @module
 */
import { guestImage, type GuestImageName } from '../guest/images.js';
import { Mapping } from '../memory/mapping.js';
import { replyUcall, runUntilUcall, type Ucall } from '../guest/ucall.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { Vm } from '../kvm/vm.js';
import type { MmioExit, VcpuExit } from '../kvm/exits.js';
import { bootGuest, pageTablesSize, type ExtraMapping } from '../guest/boot.js';
import { VmType } from '../core/constants.js';
import type { CaseContext } from './harness.js';
import { argRangeError, argTypeError } from '../core/errors.js';

/** Bytes in a MiB / GiB. */
export const MiB = 1 << 20;
export const GiB = 1 << 30;
/** Slot 0's size. */
export const CODE_SIZE = 2 * MiB;

/** A VM with code memory in slot 0, closed with the case. */
export interface SelftestGuest {
  /** The VM. */
  vm: Vm;
  /** The case's abort signal: every run of this guest's vCPUs stops when the case times out. */
  signal: AbortSignal;
  /** Creates vCPU `id` and boots `image` on it with `args` in rdi, rsi, rdx, rcx. */
  boot(id: number, image: GuestImageName, args?: readonly (number | bigint)[]): Vcpu;
}

/** Options for {@link selftestGuest}. */
export interface SelftestGuestOptions {
  /** The VM type (default VmType.DEFAULT). */
  vmType?: number;
  /**
   * How much guest-physical memory the page tables identity-map (default 1 GiB), a multiple of
   * 2 MiB up to 512 GiB: enough for every address the guests touch, e.g. 4 GiB + n * 4 MiB for
   * private_mem_conversions_test's n vCPUs at 4 GiB.
   */
  identityMapSize?: number | bigint;
  /**
   * Memory to map beyond the identity map, with 2 MiB pages (see `LongModeOptions.extraMappings`):
   * e.g. pre_fault_memory_test's slot near the top of the guest-physical space. Default none.
   */
  extraMappings?: readonly ExtraMapping[];
}

/** Where selftestGuest writes the page tables, and where the first image copy starts. */
const PAGE_TABLES = 0x1000;
const FIRST_IMAGE = 0x10000;

/**
 * Creates the VM and its code slot; everything is closed when the case ends.
 * @throws RangeError (before creating anything) for a bad identityMapSize or extra mapping, or
 * when their page tables would not fit below the first image (15 pages)
 */
export function selftestGuest(ctx: CaseContext, opts: SelftestGuestOptions = {}): SelftestGuest {
  const identityMapSize = opts.identityMapSize ?? GiB;
  const extraMappings = opts.extraMappings ?? [];
  const tables = pageTablesSize(identityMapSize, extraMappings);
  if (BigInt(PAGE_TABLES) + tables > BigInt(FIRST_IMAGE)) {
    throw argRangeError(`selftestGuest: the page tables take ${tables / 4096n} pages; there is room for ${(FIRST_IMAGE - PAGE_TABLES) / 4096}`);
  }
  const vm = ctx.use(ctx.kvm.createVm(opts.vmType ?? VmType.DEFAULT));
  const code = ctx.use(Mapping.anonymous(CODE_SIZE));
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: CODE_SIZE, userspaceAddr: code });
  return {
    vm,
    signal: ctx.signal,
    boot(id, image, args = []) {
      if (id >= 8) throw argRangeError('selftestGuest has room for 8 vCPUs');
      const vcpu = ctx.use(vm.createVcpu(id));
      bootGuest(vcpu, {
        image: guestImage(image), loadAt: FIRST_IMAGE * (1 + id), stack: 0x90000 + 0x10000 * id,
        pageTables: PAGE_TABLES, args, identityMapSize, extraMappings,
      });
      return vcpu;
    },
  };
}

/** Options for {@link runToUcall}. */
export interface RunToUcallOptions {
  /**
   * Called for each MMIO exit; it may fill `exit.data` to answer a read. Without it an MMIO
   * exit is an UnexpectedExitError.
   */
  onMmio?: (exit: MmioExit) => void;
  /** Called for every other exit that is not a ucall; return true to keep running. */
  onExit?: (exit: VcpuExit) => boolean;
  /** The most exits to take before giving up (default 100 000). */
  maxExits?: number;
}

/**
 * Runs the vCPU on its own thread (runAsync) until its next SYNC or DONE ucall: the library's
 * ucall loop with MMIO exits routed to `onMmio`. `signal` (the case's) kicks a run in flight, so a
 * guest that never exits cannot outlast the case's timeout.
 * @throws GuestAssertionError for an ABORT; UnexpectedExitError for an exit nobody handled or
 * after `maxExits`; the signal's reason once it aborts
 */
export function runToUcall(vcpu: Vcpu, signal: AbortSignal, opts: RunToUcallOptions = {}): Promise<Ucall> {
  const { onMmio, onExit } = opts;
  return runUntilUcall(vcpu, {
    signal,
    maxExits: opts.maxExits ?? 100_000,
    onExit(exit) {
      if (exit.reason === 'mmio' && onMmio) {
        onMmio(exit);
        return true;
      }
      return onExit?.(exit) ?? false;
    },
  });
}

/** One memtest job: check [start, start + length) holds `expect`, then fill it with `fill`. */
export interface MemtestJob {
  start: number | bigint;
  length: number;
  expect: number;
  fill: number;
}

/**
 * Drives the `memtest` guest image (guest/memtest.S): each job checks a range for one
 * byte value and fills it with another; a mismatch is a guest ABORT (GuestAssertionError with the
 * address and the value found).
 */
export class Memtest {
  readonly vcpu: Vcpu;
  readonly #signal: AbortSignal;
  #pending: Ucall | undefined;

  /** Boots memtest on vCPU `id` of `guest` with its first job (not run yet). */
  constructor(guest: SelftestGuest, id: number, first: MemtestJob) {
    this.vcpu = guest.boot(id, 'memtest', [first.start, first.length, first.expect, first.fill]);
    this.#signal = guest.signal;
  }

  /** Runs the job given at construction, or `job` after the first; resolves to the guest's SYNC. */
  async run(job?: MemtestJob, opts?: RunToUcallOptions): Promise<Ucall> {
    if (this.#pending) {
      if (!job) throw argTypeError('memtest: a job is needed after the first');
      replyUcall(this.vcpu, this.#pending, [job.start, job.length, job.expect, job.fill, 0]);
    } else if (job) {
      throw argTypeError('memtest: the first job was given at boot');
    }
    const uc = await runToUcall(this.vcpu, this.#signal, opts);
    if (uc.cmd !== 'sync') throw new Error(`memtest: expected SYNC, got ${uc.cmd}`);
    this.#pending = uc;
    return uc;
  }

  /** Tells the guest to finish; resolves to its DONE. */
  async finish(): Promise<Ucall> {
    if (!this.#pending) throw argTypeError('memtest: nothing to finish');
    replyUcall(this.vcpu, this.#pending, [0, 0, 0, 0, 1]);
    const uc = await runToUcall(this.vcpu, this.#signal);
    if (uc.cmd !== 'done') throw new Error(`memtest: expected DONE, got ${uc.cmd}`);
    this.#pending = undefined;
    return uc;
  }
}
