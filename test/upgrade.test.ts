// The live-upgrade experiment (experiments/upgrade/): its guest on its own, one handover end to end
// between two real VMM processes (the built experiment, compiled here against dist/'s typings:
// `npm run build` first), the report (table, JSON, SVG chart), and its use of the public API only.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, type Vcpu } from '../lib/index.js';
import { bootGuest, GuestAssertionError, guestImage, replyUcall, runUntilUcall } from '../lib/guest/index.js';
import {
  GuestLoop, Layout, MiB, Op, Tag, checkPattern, dataPages, guestArgs, patternValue, readState, stateFromJson,
  stateToJson, writePattern, writeState, type VcpuStateJson,
} from '../experiments/upgrade/common.js';
import {
  EXPECTED_PROBES, MAX_SIZE_MIB, checkStride, experimentOptions, summarizeSizes, type ExperimentReport, type RunResult,
} from '../experiments/upgrade/experiment.js';
import { UPGRADE_OPTIONS, UPGRADE_USAGE } from '../experiments/upgrade/command.js';
import { TABLE_COLUMNS, formatMs, formatReport, niceScale, renderSvg, reportJson } from '../experiments/upgrade/report.js';
import { gmemVm, hangBound } from './kvm-host.js';
import { ROOT } from './paths.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const scratch = mkdtempSync(join(tmpdir(), 'kvm-gmem-upgrade-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Runs the guest to its next SYNC (or DONE) through the library's ucall loop; an ABORT is returned, not thrown. */
async function nextSync(vcpu: Vcpu) {
  try {
    return await runUntilUcall(vcpu, { onExit: (e) => e.reason === 'intr' });
  } catch (e) {
    if (e instanceof GuestAssertionError) return e.ucall;
    throw e;
  }
}

describe('the upgrade guest (guest/upgrade.S)', () => {
  it('fills its region with the address pattern, ticks, checks it on request, and reports a corrupted u64 by address', async (ctx) => {
    const size = 4 * MiB;
    using vm = gmemVm(ctx, SHARED);
    using gmem = vm.createGuestMemfd({ size, flags: SHARED });
    using mem = gmem.map();
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: size, userspaceAddr: mem, guestMemfd: gmem });
    using vcpu = vm.createVcpu(0);
    const seed = 0x0123456789abcdefn;
    bootGuest(vcpu, {
      image: guestImage('upgrade'), loadAt: Layout.IMAGE, stack: Layout.STACK_TOP, pageTables: Layout.PAGE_TABLES,
      identityMapSize: size, args: guestArgs(size, seed, 1000, true),
    });
    let uc = await nextSync(vcpu);
    expect(uc.args.slice(0, 4)).toEqual([Tag.FILLED, BigInt(dataPages(size)), BigInt(Layout.DATA_BASE), BigInt(size - Layout.DATA_BASE)]);
    const data = mem.bytes.subarray(Layout.DATA_BASE);
    expect(checkPattern(data, Layout.DATA_BASE, seed)).toBeUndefined(); // the host sees what the guest wrote
    uc = await nextSync(vcpu);
    expect(uc.args).toEqual([Tag.TICK, 1000n, 1000n]);
    expect(new DataView(mem.bytes.buffer).getBigUint64(Layout.COUNTER, true)).toBe(1000n);
    replyUcall(vcpu, uc, [0, 0, 0, 0, 1, Op.VERIFY]);
    uc = await nextSync(vcpu);
    expect(uc.args).toEqual([Tag.VERIFIED, BigInt(dataPages(size)), 1n, BigInt(Layout.DATA_BASE)]);
    // Every 3rd page: the count is rounded up.
    uc = await nextSync(vcpu);
    replyUcall(vcpu, uc, [0, 0, 0, 0, 3, Op.VERIFY]);
    uc = await nextSync(vcpu);
    expect(uc.args[1]).toBe(BigInt(Math.ceil(dataPages(size) / 3)));
    // One u64 changed behind the guest's back: the next check names it.
    const bad = Layout.DATA_BASE + 5 * 4096 + 8 * 17;
    new DataView(mem.bytes.buffer).setBigUint64(bad, 42n, true);
    expect(checkPattern(data, Layout.DATA_BASE, seed)).toEqual({ gpa: bad, actual: 42n, expected: patternValue(Layout.DATA_BASE + 5 * 4096, seed) });
    replyUcall(vcpu, uc, [0, 0, 0, 0, 1, Op.VERIFY]);
    uc = await nextSync(vcpu);
    expect(uc.cmd).toBe('abort');
    expect(uc.message).toBe('upgrade: pattern mismatch');
    expect(uc.args).toEqual([BigInt(bad), 42n, patternValue(Layout.DATA_BASE + 5 * 4096, seed)]);
  });

  it('resumes in another VM from its registers and a copy of its memory, wherever it was paused', async (ctx) => {
    const size = 4 * MiB;
    using vm = gmemVm(ctx, SHARED);
    using gmem = vm.createGuestMemfd({ size, flags: SHARED });
    using mem = gmem.map();
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: size, userspaceAddr: mem, guestMemfd: gmem });
    using vcpu = vm.createVcpu(0);
    const seed = 77n;
    writePattern(mem.bytes.subarray(Layout.DATA_BASE), Layout.DATA_BASE, seed); // the host writes it: no FILLED call
    bootGuest(vcpu, {
      image: guestImage('upgrade'), loadAt: Layout.IMAGE, stack: Layout.STACK_TOP, pageTables: Layout.PAGE_TABLES,
      identityMapSize: size, args: guestArgs(size, seed, 5000, false),
    });
    const loop = new GuestLoop(vcpu);
    let ticks = 0;
    const ran = loop.run((uc) => {
      expect(uc.args[0]).toBe(Tag.TICK);
      if (++ticks === 2) setTimeout(() => loop.pause(), 3);
    });
    expect(await ran).toBe('paused');
    const state = readState(vcpu);
    const counter = new DataView(mem.bytes.buffer).getBigUint64(Layout.COUNTER, true);
    expect(counter).toBeGreaterThanOrEqual(10000n);
    // The counter's register copy (RBP) is the memory's, or one behind between the two increments.
    expect(counter - state.regs.rbp).toBeLessThanOrEqual(1n);

    // The new VM: state through JSON, as between the processes.
    using vm2 = gmemVm(ctx, SHARED);
    using gmem2 = vm2.createGuestMemfd({ size, flags: SHARED });
    using mem2 = gmem2.map();
    mem2.bytes.set(mem.bytes);
    vm2.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: size, userspaceAddr: mem2, guestMemfd: gmem2 });
    using vcpu2 = vm2.createVcpu(0);
    writeState(vcpu2, stateFromJson(JSON.parse(JSON.stringify(stateToJson(state))) as VcpuStateJson));
    mem.bytes.fill(0); // the old memory is gone: the new guest can only be running on the copy
    const uc = await nextSync(vcpu2);
    expect(uc.args[0]).toBe(Tag.TICK);
    expect(uc.args[1]).toBeGreaterThan(counter);
    expect(uc.args[1]! % 5000n).toBe(0n);
    replyUcall(vcpu2, uc, [0, 0, 0, 0, 1, Op.VERIFY]);
    const verified = await nextSync(vcpu2);
    expect(verified.cmd).toBe('sync');
    expect(verified.args.slice(0, 2)).toEqual([Tag.VERIFIED, BigInt(dataPages(size))]);
  });

  it('carries every register, special register and FPU field through JSON unchanged', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using vcpu = vm.createVcpu(0);
    const s = readState(vcpu);
    s.regs.r13 = 0xfedcba9876543210n;
    s.fpu.xmm[17] = 0xab;
    const back = stateFromJson(JSON.parse(JSON.stringify(stateToJson(s))) as VcpuStateJson);
    expect(back).toEqual(s);
  });
});

let built: string | undefined;

/**
 * Compiles experiments/ against the package's published typings (dist/) into build/experiments/
 * unless that is newer than its sources and dist/ (as scripts/upgrade-experiment.mjs decides);
 * returns main.js.
 */
function buildExperiment(): string {
  if (built !== undefined) return built;
  const typings = join(ROOT, 'dist', 'index.d.ts');
  if (!existsSync(typings)) throw new Error('dist/ is not built: run `npm run build` first');
  const main = join(ROOT, 'build', 'experiments', 'upgrade', 'main.js');
  const sources = [join(ROOT, 'experiments', 'tsconfig.json'), typings];
  for (const f of readdirSync(join(ROOT, 'experiments', 'upgrade'))) sources.push(join(ROOT, 'experiments', 'upgrade', f));
  const mtime = (p: string) => (existsSync(p) ? statSync(p).mtimeMs : 0);
  if (mtime(main) < Math.max(...sources.map(mtime))) {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'experiments', 'tsconfig.json')], { encoding: 'utf8', timeout: hangBound(120_000) });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  }
  return (built = main);
}

describe('the experiment as a program', () => {
  it('imports the package only through its public entry points (kvm-gmem, /guest, /ipc, /selftest)', () => {
    const dir = join(ROOT, 'experiments', 'upgrade');
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));
    expect(files).toContain('main.ts');
    const specifiers = new Set<string>();
    for (const f of files) {
      for (const m of readFileSync(join(dir, f), 'utf8').matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'([^']+)'/gm)) specifiers.add(m[1]!);
    }
    const outside = [...specifiers].filter((s) => !s.startsWith('node:') && !/^\.\/[\w-]+\.js$/.test(s));
    expect(outside.sort()).toEqual(['kvm-gmem', 'kvm-gmem/guest', 'kvm-gmem/ipc', 'kvm-gmem/selftest']);
  });

  it('is not shipped: package.json "files" leaves experiments/ and build/ out', () => {
    const files = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files: string[] }).files;
    expect(files.filter((f) => /^(experiments|build)\b/.test(f))).toEqual([]);
  });

  it('--help prints the usage and exits 0; a bad option is a usage error (exit 2)', () => {
    const main = buildExperiment();
    const help = spawnSync(process.execPath, [main, '--help'], { encoding: 'utf8', timeout: hangBound(30_000) });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^usage: npm run upgrade-experiment -- \[options\]\n/);
    expect(help.stdout).toMatch(/--sizes LIST/);
    expect(help.stdout).toBe(UPGRADE_USAGE);
    const bad = spawnSync(process.execPath, [main, '--sizes', '3'], { encoding: 'utf8', timeout: hangBound(30_000) });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/^upgrade-experiment: memory sizes must be even numbers of MiB/);
    // A chart that could not be written is a usage error before the run, not a lost run at its end.
    const cwd = mkdtempSync(join(scratch, 'cwd-'));
    for (const [chart, why] of [[join(scratch, 'no-such-dir', 'c.svg'), /cannot write in .*no-such-dir \(ENOENT\)/], [scratch, /is a directory/], ['', /--chart needs a file name/]] as const) {
      const r = spawnSync(process.execPath, [main, '--sizes', '2', '--chart', chart], { cwd, encoding: 'utf8', timeout: hangBound(30_000) });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(why);
      expect(r.stdout).toBe('');
    }
    expect(readdirSync(cwd)).toEqual([]);
  }, hangBound(180_000));

  it('--help lists every option the command takes; no file is written unless --chart names one', () => {
    const listed = [...UPGRADE_USAGE.matchAll(/^ {2}(?:-(\w), )?--([\w-]+)/gm)].map((m) => m[2]);
    expect(listed.sort()).toEqual(Object.keys(UPGRADE_OPTIONS).sort());
    expect(UPGRADE_USAGE).toMatch(/--chart FILE +also write an SVG chart to FILE.*\n.*\(default: no file is written\)/);
    expect(UPGRADE_USAGE).not.toMatch(/\.svg/);
  });
});

describe('upgrade-experiment, end to end', () => {
  it('hands a 16 MiB guest from one VMM process to another: the guest resumes with its memory intact, the old VMM exits, the guest keeps counting', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
    const main = buildExperiment();
    const cwd = mkdtempSync(join(scratch, 'cwd-'));
    const chart = join(scratch, 'chart.svg');
    const r = spawnSync(process.execPath, [main, '--sizes', '16', '--runs', '1', '--json', '--chart', chart, '--after-ms', '300'], {
      cwd, encoding: 'utf8', timeout: hangBound(120_000),
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/upgrade-experiment: 16 MiB: blackout [\d.]+ ms/);
    expect(r.stderr).toContain(`upgrade-experiment: chart written to ${chart}\n`);
    expect(readdirSync(cwd)).toEqual([]); // the chart went where --chart said, nothing else was written
    const rep = JSON.parse(r.stdout) as ExperimentReport; // stdout is the JSON and nothing else
    expect(rep.ok).toBe(true);
    expect(rep.runs).toHaveLength(1);
    const run = rep.runs[0]!;
    expect(run.failures).toEqual([]);
    // The guest itself checked every page of its data region after the resume, and the new VMM
    // checked the received memory and compared the copy byte for byte.
    expect(run.filledBy).toBe('guest');
    expect(run.guestVerify.stride).toBe(1);
    expect(run.guestVerify.pages).toBe(dataPages(16 * MiB));
    expect(run.probes.receivedMemory).toBe('intact');
    expect(run.probes.copyCompare).toBe('equal');
    // The counter: the memory was copied at the pause, and the guest counted on from there.
    expect(run.counterAtResume).toBe(run.counterAtPause);
    expect(BigInt(run.counterFirstTick)).toBeGreaterThan(BigInt(run.counterAtPause));
    expect(BigInt(run.counterLast)).toBeGreaterThan(BigInt(run.counterFirstTick));
    // The old VMM exited (status 0) and the new guest ticked on after that.
    expect(run.oldExit.code).toBe(0);
    expect(run.ticksAfterOldExit).toBeGreaterThanOrEqual(2);
    expect(run.ranAfterOldExitMs).toBeGreaterThanOrEqual(300);
    expect(run.newExit.code).toBe(0);
    // What the kernel answered.
    expect(run.probes.receivedKinds).toEqual(['guest_memfd', 'vm', 'vcpu']);
    expect(run.probes.mapReceived).toBe('ok');
    expect(run.probes.vmCheckExtension).toBe('EIO');
    expect(run.probes.vmCreateGuestMemfd).toBe('EIO');
    expect(run.probes.vcpuGetRegs).toBe('EIO');
    expect(run.probes.bindReceivedToNewVm).toBe('EINVAL');
    expect(run.probes.bindOwnToNewVm).toBe('ok');
    expect(run.unexpectedProbes).toEqual([]);
    expect(run.rebind.nonzero.system).toContain(Cap.GUEST_MEMFD);
    expect(run.rebind.gmemFlags.unknownBits).toBe('0x0');
    expect(run.rebind.anyWay).toBe(false);
    // The blackout is its parts, and the whole memory was copied.
    expect(run.bytesCopied).toBe(16 * MiB);
    expect(run.blackoutMs).toBeCloseTo(run.handoverMs + run.copyMs + run.restoreMs, 6);
    for (const t of [run.pauseMs, run.handoverMs, run.copyMs, run.restoreMs]) expect(t).toBeGreaterThan(0);
    const parts = run.restoreParts;
    expect(parts.bindMs + parts.vcpuMs + parts.stateMs).toBeLessThanOrEqual(run.restoreMs);
    expect(run.pauseMs).toBeLessThan(run.handoverMs);
    const svg = readFileSync(chart, 'utf8');
    expect(checkXml(svg)).toBe('svg');
  }, hangBound(300_000));

  it('writes no file without --chart, and with --json prints only the JSON', (ctx) => {
    using _vm = gmemVm(ctx, SHARED);
    const main = buildExperiment();
    const cwd = mkdtempSync(join(scratch, 'cwd-'));
    const r = spawnSync(process.execPath, [main, '--sizes', '2', '--runs', '1', '--json', '--after-ms', '300'], {
      cwd, encoding: 'utf8', timeout: hangBound(120_000),
    });
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(cwd)).toEqual([]);
    expect(r.stderr).not.toMatch(/chart/);
    const rep = JSON.parse(r.stdout) as ExperimentReport;
    expect(rep.ok).toBe(true);
    expect(rep.sizes.map((s) => [s.sizeMiB, s.medianRun])).toEqual([[2, 1]]);
  }, hangBound(300_000));
});

// ---- the report --------------------------------------------------------------------------------

/** A well-formedness check enough for the chart: balanced tags, quoted attributes, escaped text. Returns the root's name. */
function checkXml(text: string): string {
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  let root = '';
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)|(<)/g;
  for (const m of body.matchAll(re)) {
    if (m[6] !== undefined) throw new Error(`a stray '<' at ${m.index}`);
    if (m[5] !== undefined) {
      if (/&(?!amp;|lt;|gt;|quot;|apos;|#\d+;)/.test(m[5])) throw new Error(`an unescaped '&' in text at ${m.index}`);
      if (stack.length === 0 && m[5].trim() !== '') throw new Error('text outside the root element');
      continue;
    }
    const [, close, name, , selfClose] = m;
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> does not close the open element at ${m.index}`);
    } else {
      if (stack.length === 0) {
        if (root) throw new Error('two root elements');
        root = name!;
      }
      if (!selfClose) stack.push(name!);
    }
  }
  if (stack.length) throw new Error(`unclosed: ${stack.join(', ')}`);
  return root;
}

function fakeRun(sizeMiB: number, over: Partial<RunResult> = {}): RunResult {
  const pages = dataPages(sizeMiB * MiB);
  return {
    sizeMiB, run: 1, bytes: sizeMiB * MiB, bytesCopied: sizeMiB * MiB, seed: '1', filledBy: 'guest', fillMs: 1, msPerTick: 140,
    prepareMs: 5, pauseMs: 0.4, handoverMs: 2, copyMs: sizeMiB / 7, restoreMs: 3,
    restoreParts: { bindMs: 1, vcpuMs: 1, stateMs: 0.5 }, blackoutMs: 5 + sizeMiB / 7, copyGiBps: 7,
    ripAtPause: '100bd', counterAtPause: '100', counterAtResume: '100', counterFirstTick: '200', counterLast: '300',
    guestVerify: { stride: 1, pages, pagesTotal: pages, ms: 10 }, hostCheckMs: 1,
    probes: {
      receivedKinds: ['guest_memfd', 'vm', 'vcpu'], mapReceived: 'ok', receivedMemory: 'intact', copyCompare: 'equal',
      vmCheckExtension: 'EIO', vmCreateGuestMemfd: 'EIO', vcpuGetRegs: 'EIO', bindReceivedToNewVm: 'EINVAL', bindOwnToNewVm: 'ok',
    },
    rebind: {
      uapi: 'no <rebind> & no link', capLimit: 300, lastKnownCap: 244, nonzero: { system: [0, 234], vm: [0, 234] },
      unknown: { system: [], vm: [] }, gmemFlags: { system: 3, vm: 3, unknownBits: '0x0' }, anyWay: false,
    },
    oldExit: { code: 0, signal: null, afterResumeMs: 10 }, ranAfterOldExitMs: 600, ticksAfterOldExit: 3,
    newExit: { code: 0, signal: null }, unexpectedProbes: [], failures: [],
    ...over,
  };
}

function fakeReport(runs: RunResult[]): ExperimentReport {
  const sizesMiB = [...new Set(runs.map((r) => r.sizeMiB))];
  const perSize = Math.max(...sizesMiB.map((m) => runs.filter((r) => r.sizeMiB === m).length));
  const options = experimentOptions({ sizesMiB, runs: perSize });
  return {
    host: { kernel: '6.18.0 <test>', arch: 'x64', paging: 'shadow', cpus: 2, memoryGiB: 24 },
    options, runs, sizes: summarizeSizes(runs, options), probes: runs[0]!.probes, probesAgree: true, rebind: runs[0]!.rebind,
    ok: runs.every((r) => r.failures.length === 0),
  };
}

/** A run whose parts are `[handover, copy, restore]` ms. */
function partsRun(sizeMiB: number, run: number, [handoverMs, copyMs, restoreMs]: [number, number, number], over: Partial<RunResult> = {}): RunResult {
  return fakeRun(sizeMiB, {
    run, handoverMs, copyMs, restoreMs, blackoutMs: handoverMs + copyMs + restoreMs, copyGiBps: sizeMiB / 1024 / (copyMs / 1000), ...over,
  });
}

/** The bar of each `<rect>` with a tooltip: [tooltip, y, height]. */
function segments(svg: string): [string, number, number][] {
  return [...svg.matchAll(/<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="#\w+"><title>([^<]*)<\/title><\/rect>/g)]
    .map((m) => [m[3]!, Number(m[1]), Number(m[2])]);
}

describe('the report', () => {
  const rep = fakeReport([fakeRun(64), fakeRun(256, { filledBy: 'host' }), fakeRun(2048, { filledBy: 'host', guestVerify: { stride: 32, pages: 16352, pagesTotal: 524032, ms: 9 } })]);

  it('prints a table with the columns in order, one row per size', () => {
    const text = formatReport(rep, '/tmp/x.svg');
    const lines = text.split('\n');
    const header = lines.findIndex((l) => l.startsWith(' memory') || l.startsWith('memory'));
    expect(header).toBeGreaterThan(0);
    const cols = lines[header]!.trim().split(/\s{2,}/);
    expect(cols).toEqual([...TABLE_COLUMNS]);
    expect(lines[header + 1]).toMatch(/^-+( +-+)+$/);
    const rows = lines.slice(header + 2, header + 5);
    expect(rows.map((l) => l.trim().split(/\s{2,}/)[0])).toEqual(['64 MiB', '256 MiB', '2 GiB']);
    for (const row of rows) expect(row.trim().split(/\s{2,}/)).toHaveLength(TABLE_COLUMNS.length);
    expect(rows[2]).toMatch(/1 in 32 pages +ok$/);
    expect(rows[0]).toMatch(/all 16128 pages +ok$/);
    expect(text).toMatch(/binding the received guest_memfd into a new VM +EINVAL/);
    expect(text).toMatch(/A way to rebind: none on this kernel/);
    expect(text).toMatch(/would skip the copy: 293 ms of the 298 ms blackout at 2 GiB \(98%\)/);
    expect(text).toMatch(/chart: \/tmp\/x\.svg\n$/);
  });

  it('marks unexpected probe answers and failed runs', () => {
    const odd = fakeReport([
      fakeRun(64, { probes: { ...fakeRun(64).probes, bindReceivedToNewVm: 'ok' }, unexpectedProbes: ['bindReceivedToNewVm: ok (expected EINVAL)'] }),
      fakeRun(128, { failures: ['the counter did not advance after the resume'] }),
    ]);
    const text = formatReport(odd);
    expect(text).toMatch(/binding the received guest_memfd into a new VM +ok +\(UNEXPECTED: expected EINVAL\)/);
    expect(text).toMatch(/128 MiB +guest .* FAILED$/m);
    expect(text).toMatch(/FAILED runs:\n {2}128 MiB run 1: the counter did not advance after the resume/);
    expect(text).toMatch(/note: 64 MiB run 1: unexpected answers: bindReceivedToNewVm/);
    expect(EXPECTED_PROBES.bindReceivedToNewVm).toBe('EINVAL');
  });

  it('writes a well-formed SVG: one stacked bar per size, labels escaped', () => {
    const svg = renderSvg(rep);
    expect(svg.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(checkXml(svg)).toBe('svg');
    expect(svg).toContain('6.18.0 &lt;test&gt;');
    // Three segments per bar, each with a tooltip.
    expect(svg.match(/<rect [^>]*><title>/g)).toHaveLength(3 * 3);
    for (const s of ['64 MiB', '256 MiB', '2 GiB']) expect(svg).toContain(`>${s}</text>`);
    expect(svg).toContain('>298 ms</text>'); // the 2 GiB bar's total
    // A failed size draws no bar and says so.
    const failed = fakeReport([fakeRun(64), fakeRun(128, { failures: ['x'], blackoutMs: NaN, copyMs: NaN, handoverMs: NaN, restoreMs: NaN })]);
    const svg2 = renderSvg({ ...failed, sizes: failed.sizes.map((s) => (s.sizeMiB === 128 ? { ...s, ok: false } : s)) });
    expect(checkXml(svg2)).toBe('svg');
    expect(svg2).toContain('>failed</text>');
  });

  it('summarises each size by its median completed run (the lower of two), the range over the completed runs', () => {
    const runs = [
      partsRun(64, 1, [2, 50, 3]), partsRun(64, 2, [2, 17, 3]), partsRun(64, 3, [2, 20, 3]),
      partsRun(128, 1, [2, 30, 3]), partsRun(128, 2, [2, 90, 3]), partsRun(128, 3, [2, 10, 3], { failures: ['x'] }), partsRun(128, 4, [2, 35, 3]),
      partsRun(256, 1, [NaN, NaN, NaN], { failures: ['y'] }),
    ];
    const [a, b, c] = summarizeSizes(runs, experimentOptions({ sizesMiB: [64, 128, 256] }));
    expect([a!.medianRun, a!.blackoutMs, a!.copyMs, a!.blackoutRange, a!.runs, a!.ok]).toEqual([3, 25, 20, [22, 55], 3, true]);
    expect([b!.medianRun, b!.blackoutMs, b!.blackoutRange, b!.runs, b!.ok]).toEqual([4, 40, [35, 95], 4, false]);
    expect([c!.medianRun, c!.blackoutMs, c!.blackoutRange, c!.ok]).toEqual([NaN, NaN, [NaN, NaN], false]);
  });

  it('charts every run: one stacked bar per run in run order, the median run outlined, median and range above', () => {
    // Shaped on a real run of this host (README's table), with one slow run: a 2.6x spread at 1 GiB.
    const runs = [
      partsRun(64, 1, [2.4, 19.8, 3.8]), partsRun(64, 2, [2.0, 15.9, 3.1]), partsRun(64, 3, [2.2, 17.1, 3.5]),
      partsRun(1024, 1, [2.1, 142, 5.1]), partsRun(1024, 2, [2.3, 381, 7.0]), partsRun(1024, 3, [2.0, 139, 5.3]),
      partsRun(4032, 1, [2.9, 568, 26.1]), partsRun(4032, 2, [2.5, 560, 24.0]), partsRun(4032, 3, [3.1, 575, 25.2]),
    ];
    const r3 = fakeReport(runs);
    const svg = renderSvg(r3);
    expect(checkXml(svg)).toBe('svg');
    expect(svg).toContain('3 runs per size, one bar each in run order, the median outlined');
    // Three parts for each of the nine runs, named by size and run, in run order left to right.
    const segs = segments(svg);
    expect(segs).toHaveLength(3 * 9);
    expect(segs.slice(9, 18).map(([t]) => t)).toEqual(
      [1, 2, 3].flatMap((n) => ['handover', 'copy', 'restore'].map((p) => expect.stringMatching(new RegExp(`^1 GiB run ${n} ${p}: `)) as unknown as string)),
    );
    expect(segs[13]![0]).toBe('1 GiB run 2 copy: 381 ms');
    const xs = [...svg.matchAll(/<rect x="([\d.]+)"[^>]*><title>1 GiB run (\d) handover/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(xs.map(([, n]) => n)).toEqual([1, 2, 3]);
    expect(xs[0]![0]).toBeLessThan(xs[1]![0]!);
    expect(xs[1]![0]).toBeLessThan(xs[2]![0]!);
    // The slow run is drawn 2.6 times as tall as the fastest (one linear axis for all runs), and within the plot.
    const height = (n: number) => segs.filter(([t]) => t.startsWith(`1 GiB run ${n} `)).reduce((a, [, , h]) => a + h, 0);
    expect(height(2) / height(3)).toBeCloseTo(390.3 / 146.3, 1);
    for (const [, y0] of segs) expect(y0).toBeGreaterThanOrEqual(80);
    // One outline per size, around its median run (the table's row), none elsewhere.
    const outlines = [...svg.matchAll(/<rect x="([\d.]+)" [^>]*fill="none" stroke="#222222"[^>]*\/>/g)].map((m) => Number(m[1]));
    expect(r3.sizes.map((s) => s.medianRun)).toEqual([3, 1, 1]);
    const xOf = (name: string) => Number(new RegExp(`<rect x="([\\d.]+)"[^>]*><title>${name} handover`).exec(svg)![1]);
    expect(outlines).toEqual([xOf('64 MiB run 3'), xOf('1 GiB run 1'), xOf('4032 MiB run 1')]);
    expect(svg).toContain('>median 149 ms</text>');
    expect(svg).toContain('>range 146-390 ms</text>');
    expect(svg).toContain('>median 22.8 ms</text>');
    expect(svg).toContain('>range 21.0-26.0 ms</text>');
    expect(svg).toContain('>median 597 ms</text>');
    expect(svg).toContain("outlined: the run with the median blackout (the table's row)");
    expect(svg).not.toContain('a failed run');
    // The table's row for 1 GiB is the median run, with the range of all three.
    expect(formatReport(r3)).toMatch(/^ +1 GiB +guest +2\.10 ms .* 142 ms +5\.10 ms +149 ms +146-390 /m);
  });

  it('charts a failed run with a red cross and why, and its parts as far as measured', () => {
    const runs = [
      partsRun(64, 1, [2, 17, 3]), partsRun(64, 2, [2, 19, 3], { failures: ['the counter did not advance after the resume'] }),
      partsRun(64, 3, [NaN, NaN, NaN], { failures: ['new VMM: no \'resumed\' within 1000 ms <&>'] }),
      partsRun(128, 1, [NaN, NaN, NaN], { failures: ['z'] }), partsRun(128, 2, [NaN, NaN, NaN], { failures: ['z'] }),
    ];
    const svg = renderSvg(fakeReport(runs));
    expect(checkXml(svg)).toBe('svg');
    expect(segments(svg).map(([t]) => t.replace(/:.*/, ''))).toEqual(['64 MiB run 1 handover', '64 MiB run 1 copy', '64 MiB run 1 restore', '64 MiB run 2 handover', '64 MiB run 2 copy', '64 MiB run 2 restore']);
    expect(svg.match(/fill="#c00000">\u00d7<\/text><title>/g)).toHaveLength(4);
    expect(svg).toContain('<title>64 MiB run 2 failed: the counter did not advance after the resume</title>');
    expect(svg).toContain('<title>64 MiB run 3 failed: new VMM: no \'resumed\' within 1000 ms &lt;&amp;&gt;</title>');
    expect(svg).toContain('a failed run (its parts as far as measured)');
    expect(svg).toContain('>median 22.0 ms</text>'); // of the one completed run
    expect(svg).toContain('>every run failed</text>');
  });

  it('JSON: NaN becomes null, everything else round-trips', () => {
    const j = JSON.parse(reportJson(fakeReport([fakeRun(64, { fillMs: NaN })]))) as ExperimentReport;
    expect(j.runs[0]!.fillMs).toBeNull();
    expect(j.runs[0]!.probes.bindReceivedToNewVm).toBe('EINVAL');
  });

  it('scales, units, options', () => {
    expect(niceScale(294)).toEqual({ top: 300, step: 100 });
    expect(niceScale(615)).toEqual({ top: 800, step: 200 });
    expect(niceScale(19.5)).toEqual({ top: 20, step: 5 });
    expect(niceScale(0)).toEqual({ top: 1, step: 0.2 });
    expect([formatMs(0.5), formatMs(19.54), formatMs(293.6), formatMs(NaN)]).toEqual(['0.50 ms', '19.5 ms', '294 ms', '-']);
    expect(checkStride(16128, 64)).toBe(1);
    expect(checkStride(524032, 64)).toBe(32);
    expect(() => experimentOptions({ sizesMiB: [4096] })).toThrow(RangeError);
    expect(() => experimentOptions({ sizesMiB: [63] })).toThrow(/even numbers of MiB from 2 to 4032/);
    expect(() => experimentOptions({ sizesMiB: [] })).toThrow(TypeError);
    expect(experimentOptions({ sizesMiB: [MAX_SIZE_MIB] }).runs).toBe(1);
  });
});
