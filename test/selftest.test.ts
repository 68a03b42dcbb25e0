// Every selftest case (lib/selftest/), registered as a vitest test through the same code the CLI
// runs. The repository's expectation file decides which cases are expected failures on this kind
// of host, each for one failure: the test passes only if the case fails exactly that way (the
// runner's XFAIL); a pass (XPASS), another failure, an error or a timeout fails it.
import { describe, it } from 'vitest';
import { expectationFor, loadExpectations } from '../lib/selftest/expect.js';
import { finalResult } from '../lib/selftest/runner.js';
import { probeHost } from '../lib/selftest/host.js';
import { runCase, type SelftestCase } from '../lib/selftest/harness.js';
import { planSelftests } from '../lib/selftest/plan.js';
import { EXPECTED_FAILURES } from './paths.js';
import { XFAIL_MARK } from './known-limits.js';
import { REQUIRE_KVM } from './kvm-host.js';

const host = probeHost();
const expectations = loadExpectations(EXPECTED_FAILURES, host);

function register(c: SelftestCase): void {
  const exp = expectationFor(expectations, c);
  const timeout = (c.timeoutMs ?? 60_000) + 5_000;
  const body = async (ctx: { skip: (note?: string) => void }) => {
    const o = await runCase(c, host);
    if (o.verdict === 'skip') {
      if (REQUIRE_KVM && !host.available) throw new Error(`KVM_GMEM_REQUIRE_KVM=1 but ${o.reason}`);
      ctx.skip(o.reason);
      return;
    }
    const fin = finalResult(o, exp);
    if (fin.result !== 'pass' && fin.result !== 'xfail') {
      const diag = o.diagnostics.length ? `\n${o.diagnostics.map((d) => `  # ${d}`).join('\n')}` : '';
      const err = new Error(`${fin.result}: ${fin.reason}${diag}`);
      if (o.error instanceof Error) err.stack = `${err.message}\n${o.error.stack ?? ''}`;
      throw err;
    }
  };
  it(exp ? `${c.name}${XFAIL_MARK}${exp.failureText}: ${exp.reason}]` : c.name, body, timeout);
}

const groups = new Map<string, SelftestCase[]>();
for (const c of planSelftests(host)) groups.set(c.group, [...(groups.get(c.group) ?? []), c]);
for (const [group, cases] of groups) describe(group, () => cases.forEach(register));
