/**
 * KTAP text, as the kernel's kselftest.h prints it: `TAP version 13`, the plan `1..N`,
 * diagnostics as `# ` lines before each result, `ok N name`, `not ok N name`, directives
 * (`# SKIP reason`, `# XFAIL reason`, `# XPASS reason`, `# ERROR reason`, `# TIMEOUT reason`),
 * and the totals line (which, like kselftest's runner, counts a timeout as a failure).
 * @module
 */

/** A case's final result, after expectations. */
export type CaseResult = 'pass' | 'fail' | 'xfail' | 'xpass' | 'skip' | 'error' | 'timeout';

/** The counts kselftest prints. */
export interface Totals {
  pass: number;
  fail: number;
  xfail: number;
  xpass: number;
  skip: number;
  error: number;
}

/** All zeros. */
export function emptyTotals(): Totals {
  return { pass: 0, fail: 0, xfail: 0, xpass: 0, skip: 0, error: 0 };
}

/** kselftest's exit codes. */
export const KSFT = { PASS: 0, FAIL: 1, XFAIL: 2, XPASS: 3, SKIP: 4 } as const;

/**
 * The exit code for a run: 1 if anything failed, errored or unexpectedly passed; 4 if every case
 * was skipped; 0 otherwise.
 */
export function exitCode(t: Totals): number {
  if (t.fail > 0 || t.error > 0 || t.xpass > 0) return KSFT.FAIL;
  if (t.pass === 0 && t.xfail === 0) return KSFT.SKIP;
  return KSFT.PASS;
}

/** `TAP version 13`. */
export const KTAP_HEADER = 'TAP version 13';

/** The plan line. */
export function planLine(n: number): string {
  return `1..${n}`;
}

/** `# text` for each line of text (a diagnostic). */
export function diagnostic(text: string): string {
  return text.split('\n').map((l) => (l === '' ? '#' : `# ${l}`)).join('\n');
}

/** The result line for case `n`. */
export function resultLine(n: number, name: string, result: CaseResult, reason?: string): string {
  const why = reason ? ` ${oneLine(reason)}` : '';
  switch (result) {
    case 'pass': return `ok ${n} ${name}`;
    case 'fail': return `not ok ${n} ${name}`;
    case 'skip': return `ok ${n} ${name} # SKIP${why}`;
    case 'xfail': return `ok ${n} ${name} # XFAIL${why}`;
    case 'xpass': return `not ok ${n} ${name} # XPASS${why}`;
    case 'error': return `not ok ${n} ${name} # ERROR${why}`;
    case 'timeout': return `not ok ${n} ${name} # TIMEOUT${why}`;
  }
}

/** The totals line. */
export function totalsLine(t: Totals): string {
  return `# Totals: pass:${t.pass} fail:${t.fail} xfail:${t.xfail} xpass:${t.xpass} skip:${t.skip} error:${t.error}`;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}
