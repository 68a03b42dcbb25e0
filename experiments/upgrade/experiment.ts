/**
 * The live-upgrade experiment's orchestrator: for each memory size (and each run), starts an old
 * VMM and a new VMM as two processes of their own (old-vmm.ts, new-vmm.ts), joined by a Unix
 * socket pair (each end is the child's fd 3) and each talking to this process over Node IPC; has
 * the old one pause its guest and hand it over; waits for the old one to exit while the new one's
 * guest keeps running; and collects the timings, the probes' answers and the checks.
 *
 * The blackout is measured on CLOCK_MONOTONIC (process.hrtime.bigint(), the same clock in every
 * process) from the moment the old VMM asks its vCPU to stop to the new VMM's first KVM_RUN:
 *   handover = pause start -> the new VMM holds the fds and the state (kick, KVM_GET_REGS/SREGS/
 *              FPU, sendmsg, recvmsg, adopt), of which `pause` is the kick and the register reads;
 *   copy     = map the received guest_memfd and copy every byte into the new VM's own;
 *   restore  = bind the new guest_memfd, KVM_CREATE_VCPU, KVM_SET_SREGS/REGS/FPU, up to KVM_RUN.
 * What the new VMM can do before the pause (open /dev/kvm, create its VM and guest_memfd, allocate
 * and fault in that memory) is `prepare`, outside the blackout.
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { availableParallelism, arch, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FdChannel } from 'kvm-gmem/ipc';
import { hostPaging } from 'kvm-gmem/selftest';
import {
  MIN_SIZE, MiB, dataPages, msBetween, now, type ControlMessage, type FilledBy, type NewReady,
  type NewResult, type NewResumed, type NewVmmConfig, type OldReady,
  type OldVmmConfig, type Probes, type RebindSurvey, type VmmMessage,
} from './common.js';

/**
 * Hang bounds, not expectations: how long one step of a handover (ready, sent, resumed, result)
 * may take before the run counts as hung, from a base and the MiB the guest and the host work
 * through in it.
 */
const HANG = { baseMs: 30_000, guestMsPerMiB: 200, hostMsPerMiB: 20 } as const;

/** KVM_GMEM_HANG_SCALE stretches the hang bounds (`kvm-gmem exec` sets it under CPU emulation). */
const HANG_SCALE = Math.max(1, Number(process.env.KVM_GMEM_HANG_SCALE ?? 1) || 1);

/** What to run. */
export interface ExperimentOptions {
  /**
   * Guest memory sizes in MiB: even numbers from 2 to {@link MAX_SIZE_MIB}. The guest's memory is
   * one memslot at GPA 0, so it must end below the local APIC's default address (0xfee00000),
   * whose accesses KVM turns into MMIO exits.
   */
  sizesMiB: number[];
  /** Runs per size (the table shows the run with the median blackout, the chart every run). Default 1. */
  runs?: number;
  /**
   * Sizes up to this many MiB have their data region filled by the guest itself; above it the old
   * VMM writes the same pattern before the guest starts (guest code is slower at it than the host).
   * Default 128.
   */
  guestFillMaxMiB?: number;
  /**
   * After the takeover the guest checks every page of its data region if that is at most this
   * many MiB, else every k-th page with k chosen to check about this much. The new VMM compares
   * every byte host-side either way. Default 64.
   */
  guestCheckMiB?: number;
  /** Guest counting steps between two ticks (a tick is a SYNC exit). Default 65536. */
  period?: number;
  /** How long the new guest keeps running after the old VMM exited, in ms. Default 500. */
  afterMs?: number;
  /** KVM_CHECK_EXTENSION is asked for every capability number below this. Default 300. */
  capLimit?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Pass the VMM processes' own lines to `log` too. */
  verbose?: boolean;
}

/**
 * The largest guest memory, in MiB: 0xfc000000 bytes. Guest memory is one memslot from GPA 0 and
 * must end below the local APIC's default address, 0xfee00000: KVM turns guest accesses there into
 * MMIO exits even inside a memslot (a 4096 MiB guest reading its page at 0xfee00000 exits).
 */
export const MAX_SIZE_MIB = 4032;

/** The probes' expected answers on a kernel without rebinding (Linux 6.18). */
export const EXPECTED_PROBES: Partial<Record<keyof Probes, string>> = {
  mapReceived: 'ok',
  receivedMemory: 'intact',
  copyCompare: 'equal',
  vmCheckExtension: 'EIO',
  vmCreateGuestMemfd: 'EIO',
  vcpuGetRegs: 'EIO',
  bindReceivedToNewVm: 'EINVAL',
  bindOwnToNewVm: 'ok',
};

/** One handover. Times in ms; counters as decimal strings (u64). */
export interface RunResult {
  sizeMiB: number;
  /** 1-based run number within the size. */
  run: number;
  /** Guest memory size in bytes, and bytes the new VMM copied. */
  bytes: number;
  bytesCopied: number;
  seed: string;
  filledBy: FilledBy;
  fillMs: number;
  msPerTick: number;
  prepareMs: number;
  pauseMs: number;
  handoverMs: number;
  copyMs: number;
  restoreMs: number;
  /** The restore's parts (the rest of restoreMs is bookkeeping up to the first KVM_RUN). */
  restoreParts: NewResumed['restoreParts'];
  blackoutMs: number;
  /** bytesCopied / copyMs, in GiB/s. */
  copyGiBps: number;
  /** The guest's RIP at the pause (hex). */
  ripAtPause: string;
  counterAtPause: string;
  counterAtResume: string;
  counterFirstTick: string;
  counterLast: string;
  guestVerify: NewResult['guestVerify'];
  hostCheckMs: number;
  probes: Probes;
  rebind: RebindSurvey;
  /** The old VMM's exit, and when it came relative to the new guest's resume (ms). */
  oldExit: { code: number | null; signal: string | null; afterResumeMs: number };
  /** How long and how many ticks the new guest ran after the old VMM exited. */
  ranAfterOldExitMs: number;
  ticksAfterOldExit: number;
  newExit: { code: number | null; signal: string | null };
  /** Probes whose answer differs from {@link EXPECTED_PROBES} (findings, not failures). */
  unexpectedProbes: string[];
  /** What went wrong with the takeover; empty when the guest resumed with its memory intact. */
  failures: string[];
}

/**
 * The runs of one size, summarised by the completed run with the median blackout (the lower
 * median for an even count): its handover, copy and restore add up to its blackout.
 */
export interface SizeSummary {
  sizeMiB: number;
  bytes: number;
  runs: number;
  filledBy: FilledBy;
  pauseMs: number;
  handoverMs: number;
  copyMs: number;
  restoreMs: number;
  blackoutMs: number;
  copyGiBps: number;
  prepareMs: number;
  /** The smallest and largest blackout of the completed runs. */
  blackoutRange: [number, number];
  /** The number (1-based) of the run summarised here, the median one; NaN when no run completed. */
  medianRun: number;
  /** Every k-th page the guest checked after the takeover (1: all). */
  guestCheckStride: number;
  /** Whether every run's takeover succeeded. */
  ok: boolean;
}

/** Everything the experiment found. */
export interface ExperimentReport {
  host: { kernel: string; arch: string; paging: string; cpus: number; memoryGiB: number };
  options: Required<Omit<ExperimentOptions, 'log' | 'verbose'>>;
  runs: RunResult[];
  sizes: SizeSummary[];
  /** The probes' answers (the first run's; `probesAgree` says whether every run had the same). */
  probes: Probes | undefined;
  probesAgree: boolean;
  rebind: RebindSurvey | undefined;
  /** Whether every takeover succeeded. */
  ok: boolean;
}

/**
 * The VMM scripts: beside this module in build/experiments/upgrade/, or there when this runs
 * from its source (experiments/upgrade/, under vitest).
 */
export function vmmScript(name: 'old-vmm' | 'new-vmm'): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, `${name}.js`), resolve(here, '..', '..', 'build', 'experiments', 'upgrade', `${name}.js`)];
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) {
    throw new Error(`the ${name} script is not built (looked for ${candidates.join(', ')}); run \`npm run upgrade-experiment\``);
  }
  return found;
}

/** Checks and completes the options. */
export function experimentOptions(o: ExperimentOptions): Required<Omit<ExperimentOptions, 'log' | 'verbose'>> {
  if (!Array.isArray(o.sizesMiB) || o.sizesMiB.length === 0) throw new TypeError('sizesMiB must be a non-empty array');
  for (const s of o.sizesMiB) {
    if (!Number.isInteger(s) || s < MIN_SIZE / MiB || s > MAX_SIZE_MIB || s % 2 !== 0) {
      throw new RangeError(
        `memory sizes must be even numbers of MiB from ${MIN_SIZE / MiB} to ${MAX_SIZE_MIB} (guest memory is one slot at GPA 0, ` +
          `below the local APIC at 0xfee00000); got ${s}`,
      );
    }
  }
  const int = (v: number | undefined, def: number, name: string, min: number) => {
    const x = v ?? def;
    if (!Number.isInteger(x) || x < min) throw new RangeError(`${name} must be an integer >= ${min}; got ${x}`);
    return x;
  };
  return {
    sizesMiB: [...o.sizesMiB],
    runs: int(o.runs, 1, 'runs', 1),
    guestFillMaxMiB: int(o.guestFillMaxMiB, 128, 'guestFillMaxMiB', 0),
    guestCheckMiB: int(o.guestCheckMiB, 64, 'guestCheckMiB', 1),
    period: int(o.period, 65536, 'period', 1),
    afterMs: int(o.afterMs, 500, 'afterMs', 0),
    capLimit: int(o.capLimit, 300, 'capLimit', 245),
  };
}

/** Every k-th page the guest checks for a data region of `pages` pages and a budget of `checkMiB`. */
export function checkStride(pages: number, checkMiB: number): number {
  return Math.max(1, Math.ceil(pages / ((checkMiB * MiB) / 4096)));
}

/** Runs the experiment. Rejects only when it cannot start (no scripts); failed runs are in the report. */
export async function runExperiment(opts: ExperimentOptions): Promise<ExperimentReport> {
  const o = experimentOptions(opts);
  const log = opts.log ?? (() => {});
  vmmScript('old-vmm');
  vmmScript('new-vmm');
  const runs: RunResult[] = [];
  for (const sizeMiB of o.sizesMiB) {
    for (let run = 1; run <= o.runs; run++) {
      const tag = `${sizeMiB} MiB${o.runs > 1 ? ` run ${run}/${o.runs}` : ''}`;
      const r = await runHandover(sizeMiB, run, o, (line) => log(`${tag}: ${line}`), opts.verbose ?? false);
      runs.push(r);
    }
  }
  const sizes = summarizeSizes(runs, o);
  const withProbes = runs.filter((r) => r.probes.receivedKinds.length > 0);
  const first = withProbes[0];
  const key = (p: Probes) => JSON.stringify({ ...p });
  return {
    host: {
      kernel: release(), arch: arch(), paging: hostPaging().mode, cpus: availableParallelism(),
      memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    },
    options: o,
    runs,
    sizes,
    probes: first?.probes,
    probesAgree: withProbes.every((r) => key(r.probes) === key(first!.probes)),
    rebind: first?.rebind,
    ok: runs.every((r) => r.failures.length === 0),
  };
}

/**
 * The runs of each size in `o.sizesMiB` summarised (see {@link SizeSummary}): the completed run
 * with the median blackout, the range of the completed runs.
 */
export function summarizeSizes(runs: readonly RunResult[], o: Pick<Required<ExperimentOptions>, 'sizesMiB' | 'guestCheckMiB'>): SizeSummary[] {
  return o.sizesMiB.map((sizeMiB) => {
    const rs = runs.filter((r) => r.sizeMiB === sizeMiB);
    const ok = rs.filter((r) => r.failures.length === 0);
    // The run with the median blackout (the lower one of two), so that its parts add up.
    const m = [...ok].sort((a, b) => a.blackoutMs - b.blackoutMs)[(ok.length - 1) >> 1];
    return {
      sizeMiB, bytes: sizeMiB * MiB, runs: rs.length, filledBy: rs[0]!.filledBy,
      pauseMs: m?.pauseMs ?? NaN, handoverMs: m?.handoverMs ?? NaN, copyMs: m?.copyMs ?? NaN, restoreMs: m?.restoreMs ?? NaN,
      blackoutMs: m?.blackoutMs ?? NaN, copyGiBps: m?.copyGiBps ?? NaN, prepareMs: m?.prepareMs ?? NaN,
      blackoutRange: ok.length ? [ok.reduce((a, r) => Math.min(a, r.blackoutMs), Infinity), ok.reduce((a, r) => Math.max(a, r.blackoutMs), 0)] : [NaN, NaN],
      medianRun: m?.run ?? NaN,
      guestCheckStride: checkStride(dataPages(sizeMiB * MiB), o.guestCheckMiB),
      ok: ok.length === rs.length,
    };
  });
}

/** A VMM child process: its messages in order, its stderr lines, its exit. */
class VmmProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly #queue: VmmMessage[] = [];
  #waiter: (() => void) | undefined;
  #error: Error | undefined;
  /** Resolves when the process has exited (ns timestamp of the exit event). */
  readonly exited: Promise<{ code: number | null; signal: string | null; at: bigint }>;

  constructor(name: 'old' | 'new', script: string, config: object, socketFd: number, log: (l: string) => void, verbose: boolean) {
    this.name = name;
    this.child = spawn(process.execPath, [script, JSON.stringify(config)], {
      stdio: ['ignore', 'ignore', 'pipe', socketFd, 'ipc'],
    });
    let partial = '';
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (d: string) => {
      const parts = (partial + d).split('\n');
      partial = parts.pop()!;
      for (const l of parts) {
        this.lines.push(l);
        if (this.lines.length > 200) this.lines.shift();
        if (verbose) log(`  ${l}`);
      }
    });
    this.child.on('message', (m: VmmMessage) => {
      if (m?.type === 'error') this.#error = Object.assign(new Error(`${name} VMM: ${m.message}`), { stack: m.stack });
      else this.#queue.push(m);
      this.#wake();
    });
    this.exited = new Promise((res) => {
      this.child.on('exit', (code, signal) => {
        const at = now();
        if (this.#error === undefined && code !== 0) {
          this.#error = new Error(`${name} VMM exited with ${signal ?? `code ${code}`}${this.#tail()}`);
        }
        this.#wake();
        res({ code, signal, at });
      });
    });
    this.child.on('error', (e) => {
      this.#error = e;
      this.#wake();
    });
  }

  #tail(): string {
    const t = this.lines.slice(-5).join('\n    ');
    return t ? `; its last lines:\n    ${t}` : '';
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** The next message of `type` (earlier ones of other types are dropped). */
  async next<T extends VmmMessage['type']>(type: T, timeoutMs: number): Promise<Extract<VmmMessage, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#queue.findIndex((m) => m.type === type);
      if (i >= 0) return this.#queue.splice(0, i + 1).pop() as Extract<VmmMessage, { type: T }>;
      if (this.#error) throw this.#error;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`${this.name} VMM exited before '${type}'${this.#tail()}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name} VMM: no '${type}' within ${timeoutMs} ms${this.#tail()}`);
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.#waiter = () => {
          clearTimeout(t);
          res();
        };
      });
    }
  }

  send(m: ControlMessage): void {
    this.child.send(m);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms);
    p.then((v) => {
      clearTimeout(t);
      res(v);
    }, (e: unknown) => {
      clearTimeout(t);
      rej(e);
    });
  });
}

const NO_PROBES: Probes = {
  receivedKinds: [], mapReceived: 'not run', receivedMemory: 'not run', copyCompare: 'not run',
  vmCheckExtension: 'not run', vmCreateGuestMemfd: 'not run', vcpuGetRegs: 'not run',
  bindReceivedToNewVm: 'not run', bindOwnToNewVm: 'not run',
};

/** One handover of a `sizeMiB` guest between two fresh VMM processes. */
export async function runHandover(
  sizeMiB: number, run: number, o: Required<Omit<ExperimentOptions, 'log' | 'verbose'>>,
  log: (line: string) => void, verbose = false,
): Promise<RunResult> {
  const size = sizeMiB * MiB;
  const seed = randomBytes(8).readBigUInt64LE().toString();
  const guestFills = sizeMiB <= o.guestFillMaxMiB;
  const pages = dataPages(size);
  const stride = checkStride(pages, o.guestCheckMiB);
  const guestMiB = (guestFills ? sizeMiB : 0) + Math.min(sizeMiB, o.guestCheckMiB);
  const stepMs = HANG_SCALE * (HANG.baseMs + HANG.guestMsPerMiB * guestMiB + HANG.hostMsPerMiB * sizeMiB);
  const oldCfg: OldVmmConfig = { size, seed, period: o.period, guestFills, readyTicks: 3, ackTimeoutMs: stepMs };
  const newCfg: NewVmmConfig = {
    size, verifyStride: stride, afterMs: o.afterMs, receiveTimeoutMs: 2 * stepMs, oldExitTimeoutMs: stepMs, capLimit: o.capLimit,
  };

  const r: RunResult = {
    sizeMiB, run, bytes: size, bytesCopied: 0, seed, filledBy: guestFills ? 'guest' : 'host', fillMs: NaN, msPerTick: NaN,
    prepareMs: NaN, pauseMs: NaN, handoverMs: NaN, copyMs: NaN, restoreMs: NaN,
    restoreParts: { bindMs: NaN, vcpuMs: NaN, stateMs: NaN }, blackoutMs: NaN, copyGiBps: NaN,
    ripAtPause: '', counterAtPause: '', counterAtResume: '', counterFirstTick: '', counterLast: '',
    guestVerify: { stride, pages: -1, pagesTotal: pages, ms: NaN }, hostCheckMs: NaN, probes: NO_PROBES,
    rebind: undefined as unknown as RebindSurvey,
    oldExit: { code: null, signal: null, afterResumeMs: NaN }, ranAfterOldExitMs: 0, ticksAfterOldExit: 0,
    newExit: { code: null, signal: null }, unexpectedProbes: [], failures: [],
  };

  const [a, b] = FdChannel.pair();
  let oldVmm: VmmProcess | undefined;
  let newVmm: VmmProcess | undefined;
  try {
    try {
      oldVmm = new VmmProcess('old', vmmScript('old-vmm'), oldCfg, a.fd, log, verbose);
      newVmm = new VmmProcess('new', vmmScript('new-vmm'), newCfg, b.fd, log, verbose);
    } finally {
      // The children have their own copies (fd 3); the peer's close must reach each of them.
      a.close();
      b.close();
    }
    log(`old VMM pid ${oldVmm.child.pid}, new VMM pid ${newVmm.child.pid}; ${guestFills ? 'the guest fills' : 'the old VMM writes'} the pattern`);
    const [oldReady, newReady] = await Promise.all([
      oldVmm.next('ready', stepMs) as Promise<OldReady>, newVmm.next('ready', stepMs) as Promise<NewReady>,
    ]);
    r.fillMs = oldReady.fillMs;
    r.msPerTick = oldReady.msPerTick;
    r.prepareMs = newReady.prepareMs;
    log(`pattern written by the ${oldReady.filledBy} in ${(oldReady.fillMs / 1000).toFixed(1)} s; guest counting (${oldReady.msPerTick.toFixed(0)} ms a tick); new VMM prepared in ${newReady.prepareMs.toFixed(0)} ms; pausing`);

    // Half a tick later, so that the pause falls inside the guest's counting, not just after a tick.
    await new Promise((res) => setTimeout(res, oldReady.msPerTick / 2));
    oldVmm.send({ type: 'pause' });
    const sent = await oldVmm.next('sent', stepMs);
    const resumed = await newVmm.next('resumed', stepMs);
    r.ripAtPause = sent.rip;
    r.counterAtPause = sent.counterAtPause;
    r.counterAtResume = resumed.counterAtResume;
    r.bytesCopied = resumed.bytesCopied;
    r.pauseMs = msBetween(sent.pauseStart, sent.paused);
    r.handoverMs = msBetween(sent.pauseStart, resumed.received);
    r.copyMs = msBetween(resumed.received, resumed.copied);
    r.restoreMs = msBetween(resumed.copied, resumed.resumed);
    r.restoreParts = resumed.restoreParts;
    r.blackoutMs = msBetween(sent.pauseStart, resumed.resumed);
    r.copyGiBps = resumed.bytesCopied / 2 ** 30 / (r.copyMs / 1000);
    log(`blackout ${r.blackoutMs.toFixed(1)} ms: handover ${r.handoverMs.toFixed(2)} ms (pause ${r.pauseMs.toFixed(2)}), ` +
      `copy ${r.copyMs.toFixed(1)} ms (${r.copyGiBps.toFixed(2)} GiB/s), restore ${r.restoreMs.toFixed(2)} ms ` +
      `(bind ${r.restoreParts.bindMs.toFixed(2)}, vCPU ${r.restoreParts.vcpuMs.toFixed(2)}, registers ${r.restoreParts.stateMs.toFixed(2)})`);

    await oldVmm.next('acked', stepMs);
    const oldExit = await withTimeout(oldVmm.exited, stepMs, 'the old VMM\'s exit');
    r.oldExit = { code: oldExit.code, signal: oldExit.signal, afterResumeMs: msBetween(resumed.resumed, oldExit.at) };
    newVmm.send({ type: 'old-exited', at: oldExit.at.toString() });
    log(`old VMM exited (${oldExit.signal ?? `code ${oldExit.code}`}) ${r.oldExit.afterResumeMs.toFixed(0)} ms after the resume; the new guest checks its memory and runs on`);

    const result = await newVmm.next('result', stepMs);
    const newExit = await withTimeout(newVmm.exited, stepMs, 'the new VMM\'s exit');
    r.newExit = { code: newExit.code, signal: newExit.signal };
    r.probes = result.probes;
    r.rebind = result.rebind;
    r.hostCheckMs = result.hostCheckMs;
    r.guestVerify = result.guestVerify;
    r.counterFirstTick = result.counterFirstTick;
    r.counterLast = result.counterLast;
    r.ranAfterOldExitMs = result.ranAfterOldExitMs;
    r.ticksAfterOldExit = result.ticksAfterOldExit;
    judge(r, result, stride);
    log(`guest checked ${result.guestVerify.pages} pages${stride > 1 ? ` (1 in ${stride})` : ''} in ${(result.guestVerify.ms / 1000).toFixed(1)} s, ` +
      `counter ${r.counterAtPause} at the pause -> ${r.counterLast}; ran ${r.ranAfterOldExitMs.toFixed(0)} ms after the old VMM exited` +
      (r.failures.length ? `; FAILED: ${r.failures.join('; ')}` : '; ok'));
  } catch (e) {
    r.failures.push((e as Error).message);
    log(`FAILED: ${(e as Error).message}`);
  } finally {
    oldVmm?.kill();
    newVmm?.kill();
    await Promise.all([oldVmm?.exited, newVmm?.exited]);
  }
  return r;
}

/** Fills in the failures and the unexpected probe answers of a completed run. */
function judge(r: RunResult, result: NewResult, stride: number): void {
  const f = r.failures;
  const expectPages = Math.ceil(r.guestVerify.pagesTotal / stride);
  if (result.guestVerify.pages !== expectPages) f.push(`the guest checked ${result.guestVerify.pages} pages, expected ${expectPages}`);
  if (result.probes.receivedMemory !== 'intact') f.push(`received memory: ${result.probes.receivedMemory}`);
  if (result.probes.copyCompare !== 'equal') f.push(`the copy: ${result.probes.copyCompare}`);
  if (r.counterAtResume !== r.counterAtPause) f.push(`the counter at the resume (${r.counterAtResume}) is not the one at the pause (${r.counterAtPause})`);
  if (!(BigInt(r.counterFirstTick || '0') > BigInt(r.counterAtPause || '0'))) f.push('the counter did not advance after the resume');
  if (!(BigInt(r.counterLast || '0') > BigInt(r.counterFirstTick || '0'))) f.push('the counter did not advance after the first tick');
  if (r.oldExit.code !== 0) f.push(`the old VMM exited with ${r.oldExit.signal ?? `code ${r.oldExit.code}`}`);
  if (r.ticksAfterOldExit < 2) f.push(`the new guest ticked ${r.ticksAfterOldExit} times after the old VMM exited`);
  if (!result.done) f.push('the new guest did not finish with DONE');
  if (r.newExit.code !== 0) f.push(`the new VMM exited with ${r.newExit.signal ?? `code ${r.newExit.code}`}`);
  for (const [k, want] of Object.entries(EXPECTED_PROBES)) {
    const got = result.probes[k as keyof Probes];
    if (k === 'receivedMemory' || k === 'copyCompare') continue; // failures above
    if (got !== want) r.unexpectedProbes.push(`${k}: ${String(got)} (expected ${want})`);
  }
  const kinds = result.probes.receivedKinds.join(',');
  if (kinds !== 'guest_memfd,vm,vcpu') r.unexpectedProbes.push(`receivedKinds: ${kinds} (expected guest_memfd,vm,vcpu)`);
  if (result.rebind.anyWay) r.unexpectedProbes.push('rebind: this kernel shows capabilities or guest_memfd flags beyond Linux 6.18\'s');
}
