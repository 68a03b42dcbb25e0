/**
 * The exit codes of the `kvm-gmem` command, one table for every subcommand. 0, 1 and 4 follow
 * kselftest (pass, fail, skip); 2 and 3 tell a wrong command line from a command that could not
 * run.
 * @module
 */

/** Exit codes of the `kvm-gmem` command. */
export const ExitCode = {
  /** Everything asked for was done and passed. */
  OK: 0,
  /** A test failed, or the host cannot do what was asked (e.g. `info` cannot open the device). */
  FAIL: 1,
  /** The command line or a file it names is wrong: nothing was run. */
  USAGE: 2,
  /** The command could not run: a VM that did not boot, a system call that failed outside a test. */
  RUNTIME: 3,
  /** Every selftest case was skipped (kselftest's KSFT_SKIP). */
  ALL_SKIPPED: 4,
} as const;

/** A mistake in the command line or in a file it names (exit {@link ExitCode.USAGE}). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The exit code for an error that ended a command. */
export function exitCodeOf(e: unknown): number {
  if (e instanceof UsageError) return ExitCode.USAGE;
  // node:util parseArgs reports unknown or malformed options with these codes.
  const code = (e as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_')) return ExitCode.USAGE;
  return ExitCode.RUNTIME;
}
