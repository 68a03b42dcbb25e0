// The runner's own logic, on synthetic cases (no kernel claims here): verdicts, expectations,
// KTAP lines, totals and exit codes, cleanup and timeouts.
import { describe, expect, it } from 'vitest';
import { KvmError } from '../lib/index.js';
import { check, checkErrno, runCase } from '../lib/selftest/harness.js';
import { expectationFor, parseExpectations, matchesPattern } from '../lib/selftest/expect.js';
import { probeHost } from '../lib/selftest/host.js';
import { selftestGuest } from '../lib/selftest/guest.js';
import { UnexpectedExitError } from '../lib/guest/ucall.js';
import { bootGuest } from '../lib/guest/boot.js';
import { fileOverlapErrno, kernelAtLeast } from './kvm-host.js';
import { exitCode } from '../lib/selftest/ktap.js';
import { runSelftests } from '../lib/selftest/runner.js';
import { filterCases } from '../lib/selftest/plan.js';
import { openKvm } from './kvm-host.js';
import { host, mk } from './selftest-fixtures.js';

const kvmError = () => new KvmError({ errno: -22, syscall: 'ioctl', request: 'KVM_X', detail: 'x', description: 'Invalid argument' });

describe('selftest runner', () => {
  it('verdicts: pass, fail (check, unexpected errno), error (a bug in the case), skip; cleanups run in reverse', async (ctx) => {
    openKvm(ctx).close();
    const order: string[] = [];
    const cases = [
      mk('a.pass', (c) => {
        c.defer(() => void order.push('first'));
        c.defer(() => void order.push('second'));
        c.log('hello\nworld');
      }),
      mk('a.fail', () => check(false, 'it did not hold')),
      mk('a.errno', () => void checkErrno(() => { throw kvmError(); }, 'EEXIST', 'the call')),
      mk('a.error', () => { throw new TypeError('oops'); }),
      mk('a.skip', (c) => c.skip('not here')),
      mk('a.preskip', () => { throw new Error('must not run'); }, { skipReason: 'decided before' }),
    ];
    const lines: string[] = [];
    const rep = await runSelftests(cases, host(), { out: (l) => lines.push(l) });
    expect(order).toEqual(['second', 'first']);
    expect(rep.cases.map((c) => c.result)).toEqual(['pass', 'fail', 'fail', 'error', 'skip', 'skip']);
    expect(lines).toContain('# hello');
    expect(lines).toContain('# world');
    expect(lines).toContain('ok 1 a.pass');
    expect(lines).toContain('# it did not hold');
    expect(lines).toContain('not ok 2 a.fail');
    expect(lines.some((l) => /^# the call: expected EEXIST, got EINVAL/.test(l))).toBe(true);
    // An error: the reason before the result (KTAP) and in the YAML block after it (TAP).
    const err = lines.indexOf('not ok 4 a.error');
    expect(lines.slice(err - 1, err + 5)).toEqual(['# ERROR: oops', 'not ok 4 a.error', '  ---', '  result: "error"', '  error: "oops"', '  ...']);
    expect(lines).toContain('ok 5 a.skip # SKIP not here');
    expect(lines).toContain('ok 6 a.preskip # SKIP decided before');
    expect(lines.at(-1)).toBe('# Totals: pass:1 fail:2 xfail:0 xpass:0 skip:2 error:1');
    expect(rep.exitCode).toBe(1);
  });

  it('a case that outlives its timeout is a timeout, and its signal aborts', async (ctx) => {
    openKvm(ctx).close();
    let aborted = false;
    const o = await runCase(mk('slow', (c) => new Promise<void>((resolve) => {
      c.signal.addEventListener('abort', () => { aborted = true; resolve(); });
    }), { timeoutMs: 50 }), host());
    expect(o.verdict).toBe('timeout');
    expect(o.reason).toMatch(/timed out after 50 ms/);
    expect(aborted).toBe(true);
  });

  it('a failing cleanup turns a pass into an error', async (ctx) => {
    openKvm(ctx).close();
    const o = await runCase(mk('leaky', (c) => c.defer(() => { throw new Error('close failed'); })), host());
    expect(o.verdict).toBe('error');
    expect(o.reason).toBe('cleanup failed: close failed');
  });

  it('expectations: the named failure is xfail; another failure, a pass, an error or a timeout is not ok', async (ctx) => {
    openKvm(ctx).close();
    const exp = parseExpectations([
      'b.errno* -- errno EINVAL -- known EINVAL',
      'b.exit -- exit mmio -- known exit',
      'b.msg -- message /no+pe/ -- known message',
      'b.ok -- succeeds -- known success',
      'b.passes -- errno EINVAL -- gone',
      'b.skips -- errno EINVAL -- n/a',
      'b.error -- message /oops/ -- errors are never expected',
      'b.slow -- message /timed out/ -- timeouts are never expected',
    ].join('\n'), 'x.txt', host());
    const einval = () => void checkErrno(() => { throw kvmError(); }, 'EEXIST', 'the call');
    const rep = await runSelftests([
      mk('b.errno.kvm', () => { throw kvmError(); }),
      mk('b.errno.check', einval),
      mk('b.errno.other', () => void checkErrno(() => { throw new KvmError({ errno: -17, syscall: 'ioctl', detail: 'x', description: 'File exists' }); }, 'EINVAL', 'the call')),
      mk('b.exit', () => { throw new UnexpectedExitError({ reason: 'mmio', exitReason: 6, address: 0n, isWrite: false, length: 4, data: new Uint8Array(4) } as never); }),
      mk('b.msg', () => check(false, 'nooope')),
      mk('b.ok', () => void checkErrno(() => 0, 'EINVAL', 'the call')),
      mk('b.passes', () => {}),
      mk('b.skips', (c) => c.skip('why')),
      mk('b.error', () => { throw new TypeError('oops'); }),
      mk('b.slow', (c) => new Promise<void>((resolve) => c.signal.addEventListener('abort', () => resolve())), { timeoutMs: 30 }),
    ], host(), { expectations: exp });
    // b.errno.kvm: an EINVAL from a call no check expected to fail (a setup call, say) is not the
    // check's answer, so it stays a failure even under an `errno EINVAL` entry.
    expect(rep.cases.map((c) => c.result)).toEqual(['fail', 'xfail', 'fail', 'xfail', 'xfail', 'xfail', 'xpass', 'skip', 'error', 'timeout']);
    expect(rep.cases[2]!.reason).toMatch(/expected EINVAL, got EEXIST.*not the failure expected \(expected errno EINVAL: known EINVAL\)/);
    expect(rep.cases[4]!.failure).toBe('nooope');
    expect(rep.totals).toMatchObject({ xfail: 4, fail: 3, xpass: 1, error: 1 });
    expect(rep.exitCode).toBe(1);
  });

  it('expectation conditions: kernel ranges, paging, module, vm_type', () => {
    const h = host(); // 6.18.44, shadow, kvm_pvm
    const applies = (when: string) => parseExpectations(`when ${when}\nx -- errno EINVAL -- r\n`, 'e.txt', h).entries[0]!.applies;
    expect([applies('kernel<7.2'), applies('kernel<6.18'), applies('kernel>=6.18'), applies('kernel=6.18.44'), applies('kernel>6.18.44')])
      .toEqual([true, false, true, true, false]);
    expect([applies('paging=shadow'), applies('paging=tdp'), applies('module=kvm_pvm'), applies('module=kvm_amd')]).toEqual([true, false, true, false]);
    expect(applies('kernel<7.2 module=kvm_amd')).toBe(false);
    const f = parseExpectations('when vm_type=SW_PROTECTED\nx* -- errno EINVAL -- r\n', 'e.txt', h);
    expect(expectationFor(f, { name: 'x [vm_type=SW_PROTECTED]', vmType: 'SW_PROTECTED' })).toBeDefined();
    expect(expectationFor(f, { name: 'x [vm_type=DEFAULT]', vmType: 'DEFAULT' })).toBeUndefined();
    expect(expectationFor(f, { name: 'x' })).toBeUndefined();
    expect(() => parseExpectations('when kernel<seven\n', 'e.txt', h)).toThrow(/e\.txt:1: "seven" is not a kernel version/);
    expect(() => parseExpectations('when paging<tdp\n', 'e.txt', h)).toThrow(/takes only "="/);
    expect(() => parseExpectations('x -- errno einval -- r\n', 'e.txt', h)).toThrow(/e\.txt:1: the failure must be/);
    expect(() => parseExpectations('x -- reason only\n', 'e.txt', h)).toThrow(/expected "PATTERN -- FAILURE -- REASON"/);
  });

  it('a guest that never exits: the case times out, its vCPU is kicked, and the next case runs', async (ctx) => {
    openKvm(ctx).close();
    const spin = mk('c.spin', async (c) => {
      const g = selftestGuest(c);
      const vcpu = c.use(g.vm.createVcpu(0));
      bootGuest(vcpu, { image: new Uint8Array([0xeb, 0xfe]), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000 }); // jmp .
      await vcpu.runAsync({ signal: c.signal });
    }, { timeoutMs: 1000 });
    const lines: string[] = [];
    const rep = await runSelftests([spin, mk('c.after', () => {})], probeHost(), { out: (l) => lines.push(l) });
    expect(rep.cases.map((c) => c.result)).toEqual(['timeout', 'pass']);
    const spun = lines.indexOf('not ok 1 c.spin');
    expect(lines.slice(spun - 1, spun + 5)).toEqual([
      '# TIMEOUT: timed out after 1000 ms', 'not ok 1 c.spin', '  ---', '  result: "timeout"', '  error: "timed out after 1000 ms"', '  ...',
    ]);
    expect(lines.at(-1)).toMatch(/^# Totals: pass:1 fail:1 /);
  });

  it('a host without KVM: every case skips with the reason (exit 4), or errors when KVM is required', async () => {
    const cases = [mk('c.one', () => {}), mk('c.two', () => {})];
    const skipped = await runSelftests(cases, host(false));
    expect(skipped.cases.map((c) => [c.result, c.reason])).toEqual([['skip', 'no KVM here'], ['skip', 'no KVM here']]);
    expect(skipped.exitCode).toBe(4);
    const required = await runSelftests(cases, host(false), { requireKvm: true });
    expect(required.cases.map((c) => c.result)).toEqual(['error', 'error']);
    expect(required.exitCode).toBe(1);
  });

  it('exit codes and patterns', () => {
    const t = { pass: 0, fail: 0, xfail: 0, xpass: 0, skip: 0, error: 0 };
    expect(exitCode({ ...t, pass: 1, skip: 3 })).toBe(0);
    expect(exitCode({ ...t, xfail: 1 })).toBe(0);
    expect(exitCode({ ...t, skip: 2 })).toBe(4);
    expect(exitCode({ ...t, pass: 5, xpass: 1 })).toBe(1);
    expect(exitCode({ ...t, pass: 5, error: 1 })).toBe(1);
    expect(matchesPattern('a.b [x=*]', 'a.b [x=MMAP|INIT_SHARED]')).toBe(true);
    expect(matchesPattern('a.b', 'a.b [x]')).toBe(false);
    expect(matchesPattern('a.(b)', 'a.(b)')).toBe(true);
    const cs = [mk('x.one [f=0]', () => {}), mk('x.two [f=0]', () => {}), mk('y.one', () => {})];
    expect(filterCases(cs, 'one').map((c) => c.name)).toEqual(['x.one [f=0]', 'y.one']);
    expect(filterCases(cs, 'x.*').map((c) => c.name)).toEqual(['x.one [f=0]', 'x.two [f=0]']);
    expect(filterCases(cs, 'two, y.one').map((c) => c.name)).toEqual(['x.two [f=0]', 'y.one']);
    expect(() => parseExpectations('when color=blue\n', 'e.txt', host())).toThrow(/e\.txt:1: unknown condition/);
    expect(() => parseExpectations('name -- \n', 'e.txt', host())).toThrow(/expected "PATTERN -- FAILURE -- REASON"/);
  });

  it('kernel version gates read uname release', () => {
    expect(kernelAtLeast(7, 2, '6.18.44-fc-v769')).toBe(false);
    expect(kernelAtLeast(7, 2, '7.2.0-rc1')).toBe(true);
    expect(kernelAtLeast(7, 2, '7.10.1')).toBe(true);
    expect(kernelAtLeast(7, 2, '8.0.0')).toBe(true);
    expect(kernelAtLeast(7, 2, 'weird')).toBe(false);
    expect(fileOverlapErrno('6.18.44')).toBe('EINVAL');
    expect(fileOverlapErrno('7.2.0')).toBe('EEXIST');
  });
});
