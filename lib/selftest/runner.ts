/**
 * The selftest runner behind `kvm-gmem selftest`: runs a plan of cases one after the other,
 * applies the expectation file, and reports as KTAP (see ktap.ts for the format) or JSON, with a
 * progress line per case on a second stream.
 * @module
 */
import { runCase, type CaseOutcome, type SelftestCase } from './harness.js';
import { expectationFor, failureMatches, type Expectation, type ExpectationFile } from './expect.js';
import type { HostFacts } from './host.js';
import { describeHost } from './host.js';
import {
  caseLines, diagnostic, emptyTotals, exitCode, KTAP_HEADER, planLine, totalsLine, type CaseResult, type Totals,
} from './ktap.js';

/** One case's report. */
export interface CaseReport {
  /** Its KTAP test number (1-based). */
  number: number;
  /** Its name. */
  name: string;
  /** Its group. */
  group: SelftestCase['group'];
  /** The upstream function or seed it mirrors. */
  source: string;
  /** What it checks. */
  summary: string;
  /** The result, after expectations. */
  result: CaseResult;
  /** The skip, failure, error or expectation reason. */
  reason?: string;
  /** The failure message, for xfail (the reason then holds the expectation's). */
  failure?: string;
  /** Diagnostic lines. */
  diagnostics: string[];
  /** Wall time in milliseconds. */
  durationMs: number;
}

/** What a run gives. */
export interface RunReport {
  /** The host as probed. */
  host: HostFacts;
  /** The expectation file, if one was given. */
  expectations?: ExpectationFile;
  /** Each case in order. */
  cases: CaseReport[];
  /** The counts. */
  totals: Totals;
  /** kselftest's exit code for the run (see ktap.exitCode). */
  exitCode: number;
}

/** Options for {@link runSelftests}. */
export interface RunOptions {
  /** Where the KTAP text goes, line by line (default: nowhere). */
  out?: (line: string) => void;
  /** Where progress lines go (default: nowhere). */
  progress?: (line: string) => void;
  /** Expected failures. */
  expectations?: ExpectationFile;
  /** Treat a host without usable KVM as an error instead of skipping (KVM_GMEM_REQUIRE_KVM=1). */
  requireKvm?: boolean;
  /** The device path (default /dev/kvm). */
  device?: string;
  /** The tool's name and version for the header. */
  tool?: string;
}

/**
 * Applies an expectation to a case's outcome: the failure the entry names is an XFAIL; any other
 * failure stays a failure (saying what was expected), a pass is an XPASS, and errors, timeouts
 * and skips are never changed.
 */
export function finalResult(outcome: CaseOutcome, exp: Expectation | undefined): { result: CaseResult; reason?: string; failure?: string } {
  const reason = outcome.reason;
  const plain = { result: outcome.verdict, ...(reason !== undefined ? { reason } : {}) };
  if (!exp) return plain;
  const where = `(expected ${exp.failureText}: ${exp.reason})`;
  if (outcome.verdict === 'fail') {
    if (failureMatches(exp, outcome)) return { result: 'xfail', reason: exp.reason, ...(reason !== undefined ? { failure: reason } : {}) };
    return { result: 'fail', reason: `${reason ?? 'failed'}; not the failure expected ${where}` };
  }
  if (outcome.verdict === 'pass') return { result: 'xpass', reason: `expected to fail ${where}, but passed` };
  return plain;
}

/** Runs `cases` in order and reports; never throws for a case's failure. */
export async function runSelftests(cases: readonly SelftestCase[], host: HostFacts, opts: RunOptions = {}): Promise<RunReport> {
  const out = opts.out ?? (() => {});
  const progress = opts.progress ?? (() => {});
  const totals = emptyTotals();
  const reports: CaseReport[] = [];
  out(KTAP_HEADER);
  out(diagnostic(`${opts.tool ?? 'kvm-gmem selftest'}: ${describeHost(host)}`));
  if (opts.expectations) {
    const e = opts.expectations;
    const here = e.entries.filter((x) => x.applies).length;
    out(diagnostic(`expectations: ${e.path}: ${here} of ${e.entries.length} entries apply to this host (${hostConditions(host)})`));
    for (const x of e.entries) {
      if (x.applies && !cases.some((c) => expectationFor({ path: e.path, entries: [x] }, c))) {
        out(diagnostic(`expectations: ${e.path}:${x.line}: "${x.pattern}" names no case in this run`));
      }
    }
  }
  out(planLine(cases.length));
  const noKvm = !host.available && opts.requireKvm;
  for (const [i, c] of cases.entries()) {
    const n = i + 1;
    let outcome: CaseOutcome;
    if (noKvm) {
      outcome = { verdict: 'error', reason: `KVM_GMEM_REQUIRE_KVM=1 but ${host.unavailableReason ?? 'KVM is not usable'}`, diagnostics: [], durationMs: 0 };
    } else {
      outcome = await runCase(c, host, { ...(opts.device !== undefined ? { device: opts.device } : {}) });
    }
    const fin = finalResult(outcome, expectationFor(opts.expectations, c));
    totals[fin.result === 'timeout' ? 'fail' : fin.result]++;
    const report: CaseReport = {
      number: n, name: c.name, group: c.group, source: c.source, summary: c.summary, result: fin.result,
      diagnostics: outcome.diagnostics, durationMs: Math.round(outcome.durationMs * 10) / 10,
      ...(fin.reason !== undefined ? { reason: fin.reason } : {}),
      ...(fin.failure !== undefined ? { failure: fin.failure } : {}),
    };
    reports.push(report);
    for (const line of caseLines(report)) out(line);
    progress(`[${n}/${cases.length}] ${c.name} ${fin.result}${fin.result === 'pass' ? '' : `: ${fin.reason ?? ''}`} (${Math.round(outcome.durationMs)} ms)`);
  }
  out(totalsLine(totals));
  return {
    host, cases: reports, totals, exitCode: exitCode(totals),
    ...(opts.expectations ? { expectations: opts.expectations } : {}),
  };
}

/** What `when` conditions compare on this host, for the header. */
export function hostConditions(host: HostFacts): string {
  return `kernel ${host.release}, paging ${host.paging.mode}, module ${host.paging.module ?? 'none'}`;
}

/** The report as JSON text (bigints as decimal strings). */
export function reportJson(r: RunReport): string {
  return JSON.stringify(r, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
}
