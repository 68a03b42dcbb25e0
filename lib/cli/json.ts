/**
 * The one `--json` convention of the `kvm-gmem` command: whatever the command, stdout carries
 * exactly one JSON object (nothing else; progress and logs go to stderr), shaped as a
 * {@link JsonEnvelope}: which command and version wrote it, its exit status, then the command's
 * own fields. A command that ends in an error still writes the envelope, with `error`.
 * @module
 */
import { readFileSync } from 'node:fs';
import { KvmError } from '../core/errors.js';
import { ExitCode, UsageError } from './exit.js';

/** The fields every `--json` output starts with. */
export interface JsonEnvelope {
  /** The command: 'info', 'selftest'. */
  command: string;
  /** The kvm-gmem package version that wrote it. */
  version: string;
  /** The command's exit status (see `kvm-gmem --help`). */
  exitCode: number;
  /** Present when the command ended in an error instead of its result. */
  error?: JsonError;
}

/** An error in the envelope. */
export interface JsonError {
  /** 'usage': a wrong command line or input file (exit 2); 'runtime': the command could not run (exit 3). */
  kind: 'usage' | 'runtime';
  /** The message, as printed on stderr. */
  message: string;
  /** The errno name of a failed system call ('EACCES'). */
  code?: string;
  /** What to do about it, when known (a KvmError's `hint`). */
  hint?: string;
}

let version: string | undefined;

/** The version of the installed package, read from its package.json (two levels up from this module, in lib/ or dist/). */
export function packageVersion(): string {
  version ??= (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return version;
}

/** The JSON text of a command's result: the envelope, then the payload's own fields. */
export function jsonOutput(command: string, exitCode: number, payload: object = {}): string {
  // The envelope's fields first; the payload cannot override them.
  const envelope = { command, version: packageVersion(), exitCode };
  const body: object = Object.assign({ ...envelope }, payload, envelope);
  return JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n';
}

/** The JSON text of a command that ended in `e` with `exitCode`; `message` as printed on stderr. */
export function jsonError(command: string, exitCode: number, e: unknown, message = (e as Error).message ?? String(e)): string {
  const err = e as Error & { hint?: unknown };
  const error: JsonError = {
    kind: exitCode === ExitCode.USAGE || e instanceof UsageError ? 'usage' : 'runtime',
    message,
    ...(e instanceof KvmError ? { code: e.code } : {}),
    ...(typeof err.hint === 'string' ? { hint: err.hint } : {}),
  };
  return jsonOutput(command, exitCode, { error });
}
