/**
 * KTAP text that the kernel's own KTAP parser (KUnit's kunit_parser.py) and TAP 13 readers (npm's
 * tap-parser and the reporters built on it) read the same way:
 *
 * - `TAP version 13`, header diagnostics, the plan `1..N`;
 * - per case, its diagnostic lines (`# ...`) directly before its result line, then the result
 *   line with only the directives both readers know (SKIP, TODO):
 *
 *   | result  | result line               | diagnostic line before it |
 *   |---------|---------------------------|---------------------------|
 *   | pass    | `ok N name`               |                           |
 *   | skip    | `ok N name # SKIP reason` |                           |
 *   | xfail   | `ok N name # TODO reason` | `# failed as expected: …` |
 *   | fail    | `not ok N name`           | `# reason`                |
 *   | xpass   | `not ok N name`           | `# XPASS: reason`         |
 *   | error   | `not ok N name`           | `# ERROR: reason`         |
 *   | timeout | `not ok N name`           | `# TIMEOUT: reason`       |
 *
 *   then, after each result but a pass or a skip, a TAP 13 YAML block (`result`, `error`,
 *   `diagnostics`) that TAP readers attach to that result;
 * - kselftest's totals line `# Totals: ...`, which, like kselftest's runner, counts a timeout as
 *   a failure.
 *
 * So the kernel's parser counts pass and xfail as passed, fail, xpass, error and timeout as
 * failed, skip as skipped; a TAP reader sees the same passes and failures, xfail as todo, and
 * each reason on its result.
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

/**
 * `TAP version 13`: a KTAP version line (https://docs.kernel.org/dev-tools/ktap.html#version-lines)
 * that TAP readers also know, and need before they read YAML blocks.
 */
export const KTAP_HEADER = 'TAP version 13';

/** The plan line. */
export function planLine(n: number): string {
  return `1..${n}`;
}

/** `# text` for each line of text (a diagnostic). */
export function diagnostic(text: string): string {
  return text.split('\n').map((l) => (l === '' ? '#' : `# ${l}`)).join('\n');
}

/**
 * The result line for case `n`; `reason` is written only for a skip or an expected failure, the
 * two results with a directive.
 */
export function resultLine(n: number, name: string, result: CaseResult, reason?: string): string {
  const why = reason ? ` ${oneLine(reason)}` : '';
  switch (result) {
    case 'pass': return `ok ${n} ${name}`;
    case 'skip': return `ok ${n} ${name} # SKIP${why}`;
    // ok as kselftest's XFAIL, a pass to the kernel's parser (it reads no directive but SKIP); TODO, the KTAP directive for it that TAP readers know (https://docs.kernel.org/dev-tools/ktap.html#test-case-result-lines).
    case 'xfail': return `ok ${n} ${name} # TODO${why}`;
    // No XPASS/ERROR/TIMEOUT directive: a TAP reader would take it into the name, a KTAP parser falls back to not ok (https://docs.kernel.org/dev-tools/ktap.html#test-case-result-lines).
    case 'fail': case 'xpass': case 'error': case 'timeout': return `not ok ${n} ${name}`;
  }
}

/** What {@link caseLines} writes a case from (a runner's CaseReport has these fields). */
export interface KtapCase {
  /** Its KTAP test number (1-based). */
  number: number;
  /** Its name (no `#`). */
  name: string;
  /** The result, after expectations. */
  result: CaseResult;
  /** The skip, failure, error or expectation reason. */
  reason?: string;
  /** The failure message, for xfail (the reason then holds the expectation's). */
  failure?: string;
  /** Diagnostic lines the case logged. */
  diagnostics: readonly string[];
}

/**
 * A case's KTAP lines: its diagnostics and the line saying why, the result line, and for every
 * result but a pass or a skip, the YAML block with the result, the reason and the diagnostics.
 */
export function caseLines(c: KtapCase): string[] {
  const lines = c.diagnostics.flatMap(diagnosticLines);
  // The line saying why goes directly before the result, where KTAP's diagnostics go (https://docs.kernel.org/dev-tools/ktap.html#diagnostic-lines).
  const error = c.result === 'xfail' ? c.failure : c.reason;
  const why = whyLine(c.result, error);
  if (why !== undefined) lines.push(...diagnosticLines(why));
  lines.push(resultLine(c.number, c.name, c.result, c.reason));
  if (c.result !== 'pass' && c.result !== 'skip') {
    // TAP readers take the YAML block after a result as that result's diagnostics; the kernel's parser, as diagnostic lines (https://docs.kernel.org/dev-tools/ktap.html#major-differences-between-tap-and-ktap).
    // `error` is the key tap-mocha-reporter shows for a failure, and the one node:test's TAP reporter writes.
    lines.push(...yamlBlock({ result: c.result, error, diagnostics: c.diagnostics }));
  }
  return lines;
}

function diagnosticLines(text: string): string[] {
  return diagnostic(text).split('\n');
}

function whyLine(result: CaseResult, text: string | undefined): string | undefined {
  if (text === undefined || text === '') return undefined;
  switch (result) {
    case 'fail': return text;
    case 'xfail': return `failed as expected: ${text}`;
    case 'xpass': return `XPASS: ${text}`;
    case 'error': return `ERROR: ${text}`;
    case 'timeout': return `TIMEOUT: ${text}`;
    case 'pass': case 'skip': return undefined;
  }
}

/**
 * A TAP 13 YAML diagnostic block, indented two spaces, between `---` and `...`: each string as a
 * double-quoted scalar (one line whatever it holds), each non-empty list as a sequence; undefined
 * values and empty lists are left out.
 */
export function yamlBlock(fields: Record<string, string | readonly string[] | undefined>): string[] {
  const out = ['  ---'];
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    if (typeof value === 'string') {
      out.push(`  ${key}: ${yamlString(value)}`);
    } else if (value.length > 0) {
      out.push(`  ${key}:`);
      for (const v of value) out.push(`    - ${yamlString(v)}`);
    }
  }
  out.push('  ...');
  return out;
}

/** A YAML double-quoted scalar: JSON's escapes, plus the characters YAML does not allow raw. */
function yamlString(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029\ufeff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The totals line. */
export function totalsLine(t: Totals): string {
  return `# Totals: pass:${t.pass} fail:${t.fail} xfail:${t.xfail} xpass:${t.xpass} skip:${t.skip} error:${t.error}`;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}
