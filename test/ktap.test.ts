// The selftest's KTAP as its two kinds of reader take it: npm's tap-parser (TAP 13; what
// tap-mocha-reporter and the other npm reporters are built on) must read every result, directive
// and reason, and a KTAP parser that knows no directive but SKIP (the kernel's own, kunit_parser.py,
// falls back to ok / not ok as https://docs.kernel.org/dev-tools/ktap.html says) must count the
// same passes, failures and skips as the runner's totals.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { Parser, type FinalResults, type Result } from 'tap-parser';
import { check } from '../lib/selftest/harness.js';
import { parseExpectations } from '../lib/selftest/expect.js';
import { describeNuma } from '../lib/selftest/host.js';
import { caseLines, KTAP_HEADER, planLine, totalsLine, emptyTotals } from '../lib/selftest/ktap.js';
import { runSelftests, type CaseReport, type RunReport } from '../lib/selftest/runner.js';
import { CLI } from './paths.js';
import { hangBound, openKvm } from './kvm-host.js';
import { host, mk } from './selftest-fixtures.js';


/** One result as tap-parser gives it. */
interface Point {
  id: number;
  ok: boolean;
  name: string;
  skip: boolean | string;
  todo: boolean | string;
  diag: Record<string, unknown> | null;
}

/** What tap-parser reads from a KTAP text. */
interface TapRead {
  points: Point[];
  comments: string[];
  /** Lines it could not read as TAP. */
  extra: string[];
  final: FinalResults;
}

function readTap(text: string): TapRead {
  const read: Omit<TapRead, 'final'> = { points: [], comments: [], extra: [] };
  const p = new Parser();
  p.on('assert', (r: Result) => {
    read.points.push({ id: r.id, ok: r.ok, name: r.name, skip: r.skip, todo: r.todo, diag: r.diag as Record<string, unknown> | null });
  });
  p.on('comment', (c: string) => read.comments.push(c.replace(/\n$/, '')));
  p.on('extra', (e: string) => read.extra.push(e));
  p.end(text);
  const final = p.results;
  if (!final) throw new Error('tap-parser did not complete');
  return { ...read, final };
}

/**
 * What a KTAP parser that reads no directive but SKIP makes of the text (the spec's fallback to
 * ok / not ok for directives it does not know); every other line must be one it takes as a
 * diagnostic: nothing indented or prefixed may look like a result, a plan, a version line or a
 * subtest header, since the kernel's parser reads those at any indentation.
 */
function readKtap(text: string): { passed: number; failed: number; skipped: number; names: string[]; plan: number } {
  const lines = text.replace(/\n$/, '').split('\n');
  expect(lines[0]).toMatch(/^(K?TAP) version \d+$/);
  const r = { passed: 0, failed: 0, skipped: 0, names: [] as string[], plan: -1 };
  for (const line of lines.slice(1)) {
    const m = /^(ok|not ok) (\d+) ([^#]*?)(?: # (.*))?$/.exec(line);
    if (m) {
      r.names.push(m[3]!);
      if (m[4]?.startsWith('SKIP')) r.skipped++;
      else if (m[1] === 'ok') r.passed++;
      else r.failed++;
      continue;
    }
    const plan = /^1\.\.(\d+)$/.exec(line);
    if (plan) {
      r.plan = Number(plan[1]);
      continue;
    }
    expect(line, 'a diagnostic line a KTAP parser would take for something else').not.toMatch(/^\s*((not )?ok \d|1\.\.\d|K?TAP version|# Subtest:)/);
  }
  return r;
}

/** Checks that both readers read `text` as the runner reported `rep`, case by case and in total. */
function expectBothRead(text: string, rep: Pick<RunReport, 'cases' | 'totals'>): TapRead {
  const tap = readTap(text);
  expect(tap.extra, 'lines tap-parser could not read').toEqual([]);
  expect(tap.final.plan).toMatchObject({ start: 1, end: rep.cases.length });
  expect(tap.final.count).toBe(rep.cases.length);
  expect(tap.points).toHaveLength(rep.cases.length);
  for (const [i, c] of rep.cases.entries()) {
    const p = tap.points[i]!;
    expect(p.id).toBe(c.number);
    expect(p.name).toBe(c.name);
    const failing = ['fail', 'xpass', 'error', 'timeout'].includes(c.result);
    expect(p.ok, c.name).toBe(!failing);
    expect(p.skip, c.name).toBe(c.result === 'skip' ? c.reason : false);
    expect(p.todo, c.name).toBe(c.result === 'xfail' ? c.reason : false);
    if (c.result === 'pass' || c.result === 'skip') {
      expect(p.diag, c.name).toBeNull();
    } else {
      // The reason, what failed as expected for an xfail, and the case's log, on that result.
      expect(p.diag, c.name).toEqual({
        result: c.result,
        ...(c.result === 'xfail' ? (c.failure !== undefined ? { error: c.failure } : {}) : { error: c.reason }),
        ...(c.diagnostics.length > 0 ? { diagnostics: c.diagnostics } : {}),
      });
    }
  }
  const t = rep.totals;
  expect(tap.final.fail).toBe(t.fail + t.xpass + t.error);
  expect(tap.final.todo).toBe(t.xfail);
  expect(tap.final.skip).toBe(t.skip);
  expect(tap.final.ok).toBe(t.fail + t.xpass + t.error === 0);
  expect(tap.comments).toContain(totalsLine(t));

  const k = readKtap(text);
  expect(k.names).toEqual(rep.cases.map((c) => c.name));
  expect(k.plan).toBe(rep.cases.length);
  expect({ passed: k.passed, failed: k.failed, skipped: k.skipped }).toEqual({ passed: t.pass + t.xfail, failed: t.fail + t.xpass + t.error, skipped: t.skip });
  return tap;
}

const text = (lines: string[]) => lines.join('\n') + '\n';

describe('selftest KTAP', () => {
  it('the writer: each result kind, read by tap-parser and counted as the kernel parser counts it', () => {
    const cases: CaseReport[] = ([
      { result: 'pass', diagnostics: ['inodes 12 and 13'] },
      { result: 'fail', reason: 'KVM_SET_USER_MEMORY_REGION2: expected EINVAL, got EEXIST # not "this"\nsecond line', diagnostics: ['VM type: DEFAULT', ''] },
      { result: 'xfail', reason: 'kvm_pvm cannot reach it', failure: 'unexpected vCPU exit: mmio read at 0x100000000', diagnostics: [] },
      { result: 'xpass', reason: 'expected to fail (expected errno EINVAL: gone), but passed', diagnostics: [] },
      { result: 'skip', reason: 'needs a second NUMA node', diagnostics: [] },
      { result: 'error', reason: 'cleanup failed: close failed', diagnostics: ['before the cleanup'] },
      { result: 'timeout', reason: 'timed out after 30 ms', diagnostics: [] },
    ] as const).map((c, i) => ({
      number: i + 1, name: `k.${c.result} [vm_type=DEFAULT flags=MMAP|INIT_SHARED]`, group: 'lifecycle', source: 's', summary: 's', durationMs: 0,
      ...c, diagnostics: [...c.diagnostics],
    }));
    const totals = { pass: 1, fail: 2, xfail: 1, xpass: 1, skip: 1, error: 1 };
    const lines = [KTAP_HEADER, '# kvm-gmem selftest: synthetic', planLine(cases.length), ...cases.flatMap((c) => caseLines(c)), totalsLine(totals)];
    const tap = expectBothRead(text(lines), { cases, totals });
    // The exact text, once: diagnostics and the line saying why before each result, YAML after.
    expect(lines.slice(3, 15)).toEqual([
      '# inodes 12 and 13',
      'ok 1 k.pass [vm_type=DEFAULT flags=MMAP|INIT_SHARED]',
      '# VM type: DEFAULT',
      '#',
      '# KVM_SET_USER_MEMORY_REGION2: expected EINVAL, got EEXIST # not "this"',
      '# second line',
      'not ok 2 k.fail [vm_type=DEFAULT flags=MMAP|INIT_SHARED]',
      '  ---',
      '  result: "fail"',
      '  error: "KVM_SET_USER_MEMORY_REGION2: expected EINVAL, got EEXIST # not \\"this\\"\\nsecond line"',
      '  diagnostics:',
      '    - "VM type: DEFAULT"',
    ]);
    expect(lines).toContain('ok 3 k.xfail [vm_type=DEFAULT flags=MMAP|INIT_SHARED] # TODO kvm_pvm cannot reach it');
    expect(lines).toContain('# failed as expected: unexpected vCPU exit: mmio read at 0x100000000');
    expect(lines).toContain('# XPASS: expected to fail (expected errno EINVAL: gone), but passed');
    expect(lines).toContain('ok 5 k.skip [vm_type=DEFAULT flags=MMAP|INIT_SHARED] # SKIP needs a second NUMA node');
    expect(lines).toContain('# ERROR: cleanup failed: close failed');
    expect(lines).toContain('# TIMEOUT: timed out after 30 ms');
    // And what tap-parser made of it, literally for the two failures with the most in them.
    expect(tap.points[1]!.diag).toEqual({
      result: 'fail', error: 'KVM_SET_USER_MEMORY_REGION2: expected EINVAL, got EEXIST # not "this"\nsecond line', diagnostics: ['VM type: DEFAULT', ''],
    });
    expect(tap.points[2]).toMatchObject({ ok: true, todo: 'kvm_pvm cannot reach it', diag: { result: 'xfail', error: 'unexpected vCPU exit: mmio read at 0x100000000' } });
    expect(tap.points[6]).toMatchObject({ ok: false, skip: false, todo: false, diag: { result: 'timeout', error: 'timed out after 30 ms' } });
    expect(tap.final).toMatchObject({ count: 7, pass: 3, fail: 4, todo: 1, skip: 1, ok: false });
  });

  it('the runner on a host without KVM: skips with the reason; with KVM required, errors with the reason', async () => {
    const cases = [mk('c.one', () => {}), mk('c.two', () => {}), mk('c.three', () => {}, { skipReason: 'decided before' })];
    for (const requireKvm of [false, true]) {
      const lines: string[] = [];
      const rep = await runSelftests(cases, host(false), { out: (l) => lines.push(l), requireKvm });
      const tap = expectBothRead(text(lines), rep);
      if (requireKvm) {
        expect(tap.points.map((p) => [p.ok, p.diag?.error])).toEqual(Array.from({ length: 3 }, () => [false, 'KVM_GMEM_REQUIRE_KVM=1 but no KVM here']));
      } else {
        expect(tap.points.map((p) => [p.ok, p.skip])).toEqual([[true, 'no KVM here'], [true, 'no KVM here'], [true, 'decided before']]);
        expect(tap.final.ok).toBe(true);
      }
    }
  });

  it('the CLI without a usable device: every case a skip with the reason (tap-parser and the kernel rules agree)', () => {
    const r = spawnSync(process.execPath, [CLI, 'selftest', '--device', '/nonexistent/kvm'], {
      encoding: 'utf8', env: { ...process.env, KVM_GMEM_REQUIRE_KVM: '' }, timeout: hangBound(120_000),
    });
    expect(r.status, r.stderr).toBe(4);
    const tap = readTap(r.stdout);
    expect(tap.extra).toEqual([]);
    expect(tap.points.length).toBeGreaterThan(0);
    expect(tap.final.plan.end).toBe(tap.points.length);
    for (const p of tap.points) {
      expect(p.ok).toBe(true);
      expect(p.name).not.toMatch(/#/);
      expect(p.skip).toMatch(/^\/nonexistent\/kvm cannot be opened \(ENOENT\)/);
    }
    const k = readKtap(r.stdout);
    expect(k).toMatchObject({ passed: 0, failed: 0, skipped: tap.points.length, plan: tap.points.length });
    expect(tap.comments).toContain(totalsLine({ ...emptyTotals(), skip: tap.points.length }));
  });

  it('the runner on KVM: pass, fail, xfail, xpass, skip, error and timeout, each read with its reason', async (ctx) => {
    openKvm(ctx).close();
    const exp = parseExpectations([
      'k.xfail -- message /no+pe/ -- known message',
      'k.xpass -- message /gone/ -- fixed since',
    ].join('\n'), 'x.txt', host());
    const lines: string[] = [];
    const rep = await runSelftests([
      mk('k.pass', (c) => c.log('all good')),
      mk('k.fail', (c) => {
        c.log('first\nsecond');
        check(false, 'it did not hold');
      }),
      mk('k.xfail', () => check(false, 'nooope')),
      mk('k.xpass', () => {}),
      mk('k.skip', (c) => c.skip('not here')),
      mk('k.error', () => { throw new TypeError('oops'); }),
      mk('k.timeout', (c) => new Promise<void>((resolve) => c.signal.addEventListener('abort', () => resolve())), { timeoutMs: 30 }),
    ], host(), { out: (l) => lines.push(l), expectations: exp });
    expect(rep.cases.map((c) => c.result)).toEqual(['pass', 'fail', 'xfail', 'xpass', 'skip', 'error', 'timeout']);
    const tap = expectBothRead(text(lines), rep);
    expect(tap.points.map((p) => ({ ok: p.ok, skip: p.skip, todo: p.todo, result: p.diag?.result, error: p.diag?.error }))).toEqual([
      { ok: true, skip: false, todo: false, result: undefined, error: undefined },
      { ok: false, skip: false, todo: false, result: 'fail', error: 'it did not hold' },
      { ok: true, skip: false, todo: 'known message', result: 'xfail', error: 'nooope' },
      { ok: false, skip: false, todo: false, result: 'xpass', error: 'expected to fail (expected message /gone/: fixed since), but passed' },
      { ok: true, skip: 'not here', todo: false, result: undefined, error: undefined },
      { ok: false, skip: false, todo: false, result: 'error', error: 'oops' },
      { ok: false, skip: false, todo: false, result: 'timeout', error: 'timed out after 30 ms' },
    ]);
    expect(tap.points[1]!.diag?.diagnostics).toEqual(['first', 'second']);
    expect(lines.at(-1)).toBe('# Totals: pass:1 fail:2 xfail:1 xpass:1 skip:1 error:1');
    expect(rep.exitCode).toBe(1);
  });

  it('the header names NUMA nodes by count and id', () => {
    expect(describeNuma([0])).toBe('NUMA 1 node (id 0)');
    expect(describeNuma([0, 1])).toBe('NUMA 2 nodes (ids 0,1)');
    expect(describeNuma([0, 2, 3])).toBe('NUMA 3 nodes (ids 0,2,3)');
  });
});
