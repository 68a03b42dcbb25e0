// `kvm-gmem selftest`, run as a user runs it: the built CLI in a child process, stdout a pipe.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { probeHost } from '../lib/selftest/host.js';
import { planSelftests } from '../lib/selftest/plan.js';
import { CLI, EXPECTED_FAILURES, ROOT } from './paths.js';
import { openKvm, hangBound } from './kvm-host.js';

const env = { ...process.env };
delete env.KVM_GMEM_REQUIRE_KVM;
const selftest = (args: string[], extraEnv: Record<string, string> = {}) =>
  spawnSync(process.execPath, [CLI, 'selftest', ...args], { encoding: 'utf8', env: { ...env, ...extraEnv }, timeout: hangBound(120_000) });
const scratch = mkdtempSync(join(tmpdir(), 'kvm-gmem-selftest-'));
const file = (name: string, text: string) => {
  const p = join(scratch, name);
  writeFileSync(p, text);
  return p;
};

/** The KTAP result lines of a run. */
const results = (stdout: string) => stdout.split('\n').filter((l) => /^(not )?ok \d+ /.test(l));

describe('kvm-gmem selftest', () => {
  it('--list names every case of the plan, once each', () => {
    const r = selftest(['--list']);
    expect(r.status).toBe(0);
    const names = r.stdout.trim().split('\n');
    expect(names).toEqual(planSelftests(probeHost()).map((c) => c.name));
    expect(new Set(names).size).toBe(names.length);
    for (const fn of ['test_guest_memfd_flags', 'test_create_guest_memfd_multiple', 'test_fallocate', 'test_invalid_punch_hole',
      'test_guest_memfd_guest', 'test_add_private_memory_region', 'test_add_overlapping_private_memory_regions',
      'test_pre_fault_memory', 'test_private_access_memslot_deleted', 'test_private_access_memslot_not_private', 'test_mem_conversions']) {
      expect(names.some((n) => n.includes(`.${fn}`)), fn).toBe(true);
    }
    expect(names.filter((n) => n.startsWith('lifecycle.')).length).toBeGreaterThanOrEqual(7);
    // The private-memory groups come last, whatever the host offers (their cases skip where it lacks them).
    expect([...new Set(names.map((n) => n.split('.')[0]))].slice(-3)).toEqual(['pre_fault_memory_test', 'private_mem_kvm_exits_test', 'private_mem_conversions_test']);
  });

  it('--list --json describes each case: group, the upstream function or seed it mirrors, a summary', () => {
    const r = selftest(['--list', '--json', '--filter', 'test_file_size']);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { command: string; cases: { name: string; group: string; source: string; summary: string }[] };
    expect(out.command).toBe('selftest');
    const list = out.cases;
    expect(list.length).toBeGreaterThan(0);
    for (const c of list) {
      expect(c.group).toBe('guest_memfd_test');
      expect(c.source).toBe('test_file_size');
      expect(c.summary).toMatch(/st_size/);
    }
  });

  it('prints KTAP: header, plan, one result per case, totals; progress on stderr; exit 0', (ctx) => {
    openKvm(ctx).close();
    const r = selftest(['--filter', 'test_file_size,test_invalid_punch_hole']);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toBe('TAP version 13');
    const plan = lines.find((l) => /^1\.\.\d+$/.test(l))!;
    const n = Number(plan.slice(3));
    expect(n).toBeGreaterThanOrEqual(2);
    const res = results(r.stdout);
    expect(res).toHaveLength(n);
    res.forEach((l, i) => expect(l).toMatch(new RegExp(`^ok ${i + 1} guest_memfd_test\\.(test_file_size|test_invalid_punch_hole) \\[`)));
    expect(lines).toContain(`# Totals: pass:${n} fail:0 xfail:0 xpass:0 skip:0 error:0`);
    // stdout is a pipe here, so progress goes to stderr, one line per case plus a summary.
    expect(r.stderr.split('\n').filter((l) => /^\[\d+\/\d+\] /.test(l))).toHaveLength(n);
    expect(r.stderr).toMatch(new RegExp(`${n} passed, 0 failed`));
  });

  it('reports SIGBUS faults from fault_private / fault_overflow as checks, and the process survives', (ctx) => {
    openKvm(ctx).close();
    const r = selftest(['--filter', 'test_fault_']);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/# SIGBUS \(BUS_ADRERR\) at offset 0x0 /);
    expect(r.stdout).toMatch(/# SIGBUS \(BUS_ADRERR\) at offset 0x4000 of a 0x10000-byte mapping/);
  });

  it('--expect: a listed case that fails is XFAIL, ok # TODO (exit 0); one that passes is XPASS, not ok (exit 1)', (ctx) => {
    openKvm(ctx).close();
    const host = probeHost();
    const guest = selftest(['--expect', EXPECTED_FAILURES, '--filter', 'test_guest_memfd_guest']);
    const line = results(guest.stdout)[0]!;
    if (host.paging.module === 'kvm_pvm') {
      expect(line).toMatch(/^ok 1 guest_memfd_test\.test_guest_memfd_guest # TODO kvm_pvm cannot reach /);
      expect(guest.stdout).toMatch(/# failed as expected: unexpected vCPU exit: mmio read at 0x100000000/);
      expect(guest.stdout).toMatch(/xfail:1 xpass:0/);
    } else {
      expect(line).toMatch(/^ok 1 guest_memfd_test\.test_guest_memfd_guest$/);
    }
    expect(guest.status).toBe(0);

    const wrong = file('wrong.txt', 'guest_memfd_test.test_file_size * -- errno EINVAL -- pretend it fails\n');
    const xpass = selftest(['--expect', wrong, '--filter', 'test_file_size']);
    expect(xpass.status).toBe(1);
    const xpassed = results(xpass.stdout);
    for (const l of xpassed) expect(l).toMatch(/^not ok \d+ guest_memfd_test\.test_file_size \[[^#]*\]$/);
    const why = 'expected to fail (expected errno EINVAL: pretend it fails), but passed';
    expect(xpass.stdout.split('\n').filter((l) => l === `# XPASS: ${why}`)).toHaveLength(xpassed.length);
    expect(xpass.stdout.split('\n').filter((l) => l === `  error: "${why}"`)).toHaveLength(xpassed.length);
    expect(xpass.stdout).toMatch(/pass:0 fail:0 xfail:0 xpass:\d+ skip:0 error:0/);
  });

  it('--expect entries under a `when` that does not hold on this host do not apply', (ctx) => {
    openKvm(ctx).close();
    const other = probeHost().paging.mode === 'tdp' ? 'shadow' : 'tdp';
    const f = file('when.txt', `when paging=${other}\nguest_memfd_test.test_file_size * -- errno EINVAL -- only on ${other} hosts\n`);
    const r = selftest(['--expect', f, '--filter', 'test_file_size']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/# expectations: .*: 0 of 1 entries apply to this host/);
  });

  it('--json gives the whole report: host, cases with diagnostics, totals, exit code', (ctx) => {
    openKvm(ctx).close();
    const r = selftest(['--json', '--filter', 'test_guest_memfd_flags']);
    expect(r.status).toBe(0);
    const rep = JSON.parse(r.stdout) as {
      command: string; version: string;
      host: { available: boolean; vmTypes: { name: string }[] };
      cases: { name: string; result: string; diagnostics: string[] }[];
      totals: { pass: number }; exitCode: number;
    };
    expect(rep).toMatchObject({ command: 'selftest', version: (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version });
    expect(rep.host.available).toBe(true);
    expect(rep.cases).toHaveLength(rep.host.vmTypes.length);
    expect(rep.cases[0]!.result).toBe('pass');
    expect(rep.cases[0]!.diagnostics[0]).toMatch(/^KVM_CAP_GUEST_MEMFD_FLAGS = 0x/);
    expect(rep.totals.pass).toBe(rep.cases.length);
    expect(rep.exitCode).toBe(0);
  });

  it('without a usable device: a plan of skips with the reason, exit 4; an error with KVM_GMEM_REQUIRE_KVM=1', () => {
    const r = selftest(['--device', '/nonexistent/kvm']);
    expect(r.status).toBe(4);
    const res = results(r.stdout);
    expect(res.length).toBe(selftest(['--list', '--device', '/nonexistent/kvm']).stdout.trim().split('\n').length);
    for (const l of res) expect(l).toMatch(/^ok \d+ .* # SKIP \/nonexistent\/kvm cannot be opened \(ENOENT\)/);
    expect(r.stdout).toMatch(new RegExp(`# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:${res.length} error:0`));

    const req = selftest(['--device', '/nonexistent/kvm', '--filter', 'test_file_size'], { KVM_GMEM_REQUIRE_KVM: '1' });
    expect(req.status).toBe(1);
    const errored = results(req.stdout);
    expect(errored.length).toBeGreaterThan(0);
    for (const l of errored) expect(l).toMatch(/^not ok \d+ [^#]*$/);
    expect(req.stdout.split('\n').filter((l) => l.startsWith('# ERROR: KVM_GMEM_REQUIRE_KVM=1 but '))).toHaveLength(errored.length);
  });

  it('applies the expectation list shipped with the package by default, from any directory; --expect none applies none', () => {
    // The package ships the list (package.json "files" names it or a directory above it) where the
    // command finds it: lib/selftest/, next to dist/.
    const files = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files: string[] }).files;
    const shipped = 'lib/selftest/expected-failures.txt';
    expect(files.filter((f) => shipped === f || shipped.startsWith(`${f.replace(/\/$/, '')}/`)), files.join(' ')).not.toEqual([]);
    expect(EXPECTED_FAILURES).toBe(join(ROOT, shipped));
    const elsewhere = mkdtempSync(join(tmpdir(), 'kvm-gmem-project-'));
    const r = spawnSync(process.execPath, [CLI, 'selftest', '--filter', 'test_file_size'], { encoding: 'utf8', env, cwd: elsewhere, timeout: hangBound(120_000) });
    expect(r.stdout).toMatch(new RegExp(`^# expectations: ${EXPECTED_FAILURES.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: \\d+ of \\d+ entries apply to this host`, 'm'));
    const none = spawnSync(process.execPath, [CLI, 'selftest', '--expect', 'none', '--filter', 'test_file_size'], { encoding: 'utf8', env, cwd: elsewhere, timeout: hangBound(120_000) });
    expect(none.stdout).toMatch(/^TAP version 13$/m);
    expect(none.stdout).not.toMatch(/^# expectations:/m);
    expect(none.status).toBe(r.status);
  });

  it('usage errors exit 2 with a message: unknown option, no matching case, a bad expectation file', () => {
    expect(selftest(['--bogus']).status).toBe(2);
    const none = selftest(['--filter', 'no-such-case']);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/no case matches --filter "no-such-case"/);
    const bad = selftest(['--expect', file('bad.txt', 'just a name\n'), '--filter', 'test_file_size']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/bad\.txt:1: expected "PATTERN -- FAILURE -- REASON"/);
  });
});
