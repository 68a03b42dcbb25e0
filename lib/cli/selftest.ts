/**
 * `kvm-gmem selftest [--list] [--filter PATTERN] [--json] [--expect FILE|none] [--device PATH]`.
 * @module
 */
import { parseArgs } from 'node:util';
import { loadExpectations, type ExpectationFile } from '../selftest/expect.js';
import { probeHost } from '../selftest/host.js';
import { filterCases, planSelftests } from '../selftest/plan.js';
import { runSelftests } from '../selftest/runner.js';
import { ExitCode, UsageError } from './exit.js';
import { jsonOutput, packageVersion } from './json.js';
import { DEFAULT_EXPECTATIONS } from './help.js';


/** Runs the command; returns the exit code. */
export async function selftestCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      list: { type: 'boolean', default: false },
      filter: { type: 'string' },
      json: { type: 'boolean', default: false },
      expect: { type: 'string' },
      device: { type: 'string' },
    },
    strict: true,
  });
  const host = probeHost(values.device);
  const cases = filterCases(planSelftests(host), values.filter);
  if (cases.length === 0) throw new UsageError(`no case matches --filter ${JSON.stringify(values.filter)} (see --list)`);
  if (values.list) {
    if (values.json) {
      const list = cases.map((c) => ({
        name: c.name, group: c.group, source: c.source, summary: c.summary,
        ...(c.skipReason !== undefined ? { skipReason: c.skipReason } : {}),
      }));
      process.stdout.write(jsonOutput('selftest', ExitCode.OK, { cases: list }));
    } else {
      for (const c of cases) process.stdout.write(`${c.name}\n`);
    }
    return ExitCode.OK;
  }
  let expectations: ExpectationFile | undefined;
  if (values.expect !== 'none') {
    try {
      expectations = loadExpectations(values.expect ?? DEFAULT_EXPECTATIONS, host);
    } catch (e) {
      throw new UsageError((e as Error).message, { cause: e });
    }
  }

  const ktapToStdout = !values.json;
  const progressToStderr = !process.stdout.isTTY;
  const report = await runSelftests(cases, host, {
    ...(ktapToStdout ? { out: (line: string) => process.stdout.write(line + '\n') } : {}),
    ...(progressToStderr ? { progress: (line: string) => process.stderr.write(line + '\n') } : {}),
    ...(expectations ? { expectations } : {}),
    ...(values.device !== undefined ? { device: values.device } : {}),
    requireKvm: process.env.KVM_GMEM_REQUIRE_KVM === '1',
    tool: `kvm-gmem selftest ${packageVersion()}`,
  });
  if (values.json) process.stdout.write(jsonOutput('selftest', report.exitCode, report));
  if (progressToStderr) {
    const t = report.totals;
    process.stderr.write(
      `kvm-gmem selftest: ${t.pass} passed, ${t.fail} failed, ${t.xfail} expected failures, ${t.xpass} unexpected passes, ` +
        `${t.skip} skipped, ${t.error} errors; exit ${report.exitCode}\n`,
    );
  }
  return report.exitCode;
}
