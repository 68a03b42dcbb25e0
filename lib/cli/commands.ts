/**
 * The `kvm-gmem` command's commands (lib/cli/main.ts is the bin that loads them).
 *
 *   kvm-gmem info [--json] [--device PATH]   what this host's KVM offers guest_memfd users
 *   kvm-gmem selftest [--list] [--filter PATTERN] [--json] [--expect FILE|none] [--device PATH]
 *                                            the selftest suite, KTAP out (lib/selftest/)
 *   kvm-gmem exec --kernel IMAGE [VM options] -- COMMAND [ARG...]
 *                                            any command on another kernel (lib/host/kernel-vm.ts)
 *   kvm-gmem [COMMAND] --help, kvm-gmem --version
 * Every command also takes the VM options (--kernel IMAGE...): it then runs on that kernel.
 * Every `--json` output follows one convention (lib/cli/json.ts).
 * @module
 */
import { fileURLToPath } from 'node:url';
// Nothing here loads the addon: the commands that need it are imported when they run, so --help,
// --version and usage errors work where it cannot load, and its load error gets the command's
// own error output (--json included).
import type { KernelVmOptions, VmAccel } from '../host/kernel-vm.js';
import { ExitCode, UsageError, exitCodeOf } from './exit.js';
import { DEFAULT_EXPECTATIONS, EXEC_HELP, INFO_HELP, MAIN_HELP, selftestHelp } from './help.js';
import { jsonError, packageVersion } from './json.js';
import { parseSize, wholeMiB } from './sizes.js';

/** Each command: its help text and what runs it. */
const COMMANDS: Record<string, { help: () => string; json: boolean }> = {
  info: { help: () => INFO_HELP, json: true },
  selftest: { help: () => selftestHelp(DEFAULT_EXPECTATIONS), json: true },
  exec: { help: () => EXEC_HELP, json: false },
};

/** The VM options, taken out of any command's arguments. Each takes a value. */
const VM_FLAGS = ['kernel', 'modules', 'kvm-module', 'kvm-param', 'vm-accel', 'vm-memory', 'vm-cpus', 'vm-numa', 'vm-timeout'] as const;

const isVmFlag = (a: string) => (VM_FLAGS as readonly string[]).includes(/^--([a-z-]+)/.exec(a)?.[1] ?? '');

/**
 * Whether the command's own arguments ask for help: -h or --help before `--` (and, for `exec`,
 * before the command to run, whose own --help is its business).
 */
function asksHelp(args: readonly string[], leading: boolean): boolean {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-h' || a === '--help') return true;
    if (a === '--') return false;
    if (isVmFlag(a)) {
      if (!a.includes('=')) i++;
    } else if (leading && !a.startsWith('-')) {
      return false;
    }
  }
  return false;
}

/**
 * Takes the VM options out of a command's arguments. For `exec` (`leading`), only those before
 * the command itself: everything from the first other word on belongs to the command.
 */
function takeVmOptions(argv: string[], leading = false): { rest: string[]; vm?: KernelVmOptions } {
  const rest: string[] = [];
  const got = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    const flag = m?.[1] as (typeof VM_FLAGS)[number] | undefined;
    if (a === '--' || !m || !flag || !VM_FLAGS.includes(flag)) {
      if (a === '--' || leading) {
        rest.push(...argv.slice(i));
        break;
      }
      rest.push(a);
      continue;
    }
    const value = m[2] ?? argv[++i];
    if (value === undefined || value === '' || (m[2] === undefined && value.startsWith('-'))) {
      throw new UsageError(`--${flag} needs a value`);
    }
    got.set(flag, [...(got.get(flag) ?? []), value]);
  }
  if (got.size === 0) return { rest };
  const one = (f: string) => got.get(f)?.at(-1);
  const kernel = one('kernel');
  if (kernel === undefined) throw new UsageError(`--${[...got.keys()][0]!} goes with --kernel IMAGE`);
  const accel = one('vm-accel') ?? 'auto';
  if (!['auto', 'kvm', 'tcg'].includes(accel)) throw new UsageError(`--vm-accel must be auto, kvm or tcg (got ${accel})`);
  const num = (f: string) => {
    const v = one(f);
    if (v === undefined) return undefined;
    if (!/^[1-9]\d*$/.test(v)) throw new UsageError(`--${f} must be a positive whole number (got ${v})`);
    return Number(v);
  };
  const cpus = num('vm-cpus');
  const numaNodes = num('vm-numa');
  const timeoutSec = num('vm-timeout');
  const memText = one('vm-memory');
  // vng and QEMU read a bare number as MiB, as parseSize does; they are given whole MiB.
  const memory = memText !== undefined ? `${wholeMiB(parseSize(memText, 'vm-memory'), 'vm-memory', memText)}M` : undefined;
  const env: Record<string, string> = {};
  for (const k of ['KVM_GMEM_REQUIRE_KVM', 'KVM_GMEM_ADDON', 'CI']) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  const vm: KernelVmOptions = {
    kernel, accel: accel as VmAccel, env, kvmParams: got.get('kvm-param') ?? [],
    ...(process.env.KVM_GMEM_VM_CONSOLE === '1' ? { vngOutput: (b: Buffer) => void process.stderr.write(b) } : {}),
    ...(one('modules') !== undefined ? { modules: one('modules')! } : {}),
    ...(one('kvm-module') !== undefined ? { kvmModule: one('kvm-module')! } : {}),
    ...(memory !== undefined ? { memory } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(numaNodes !== undefined ? { numaNodes } : {}),
    ...(timeoutSec !== undefined ? { timeoutSec } : {}),
  };
  return { rest, vm };
}

/** Runs argv inside the VM and passes its stdout and exit status through. */
async function inVm(vm: KernelVmOptions, argv: string[]): Promise<number> {
  const { runInKernelVm } = await import('../host/kernel-vm.js');
  const r = await runInKernelVm(argv, { ...vm, stdout: (b) => void process.stdout.write(b) });
  return r.status;
}

async function run(command: string, args: string[]): Promise<number> {
  const { rest, vm } = takeVmOptions(args, command === 'exec');
  if (command === 'exec') {
    if (!vm) throw new UsageError('--kernel IMAGE is missing: exec runs a command on that kernel');
    const cmd = rest[0] === '--' ? rest.slice(1) : rest;
    if (cmd.length === 0) throw new UsageError('no command to run: put it after the VM options (and --)');
    if (rest[0] !== '--' && cmd[0]!.startsWith('-')) {
      throw new UsageError(`unknown option '${cmd[0]!}' (put the command to run after --)`);
    }
    return inVm(vm, cmd);
  }
  if (vm) return inVm(vm, [process.execPath, fileURLToPath(new URL('./main.js', import.meta.url)), command, ...rest]);
  return command === 'info' ? (await import('./info.js')).infoCommand(rest) : (await import('./selftest.js')).selftestCommand(rest);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  if (command === undefined) {
    process.stderr.write(MAIN_HELP);
    return ExitCode.USAGE;
  }
  if (command === '-h' || command === '--help') {
    process.stdout.write(MAIN_HELP);
    return ExitCode.OK;
  }
  if (command === '--version' || command === '-V') {
    process.stdout.write(`${packageVersion()}\n`);
    return ExitCode.OK;
  }
  if (command === 'help') {
    const about = args[0] !== undefined ? COMMANDS[args[0]] : undefined;
    if (args[0] !== undefined && !about) return usage(`unknown command '${args[0]}'`);
    process.stdout.write(about ? about.help() : MAIN_HELP);
    return ExitCode.OK;
  }
  const spec = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!spec) {
    return usage(command.startsWith('-') ? `unknown option '${command}' (options go after the command)` : `unknown command '${command}'`);
  }
  if (asksHelp(args, command === 'exec')) {
    process.stdout.write(spec.help());
    return ExitCode.OK;
  }
  const json = spec.json && args.slice(0, args.includes('--') ? args.indexOf('--') : undefined).includes('--json');
  try {
    return await run(command, args);
  } catch (e) {
    const code = exitCodeOf(e);
    const message = code === ExitCode.USAGE ? usageMessage(e) : (e as Error).message;
    process.stderr.write(`kvm-gmem ${command}: ${message}\n${code === ExitCode.USAGE ? `see 'kvm-gmem ${command} --help'\n` : ''}`);
    if (json) process.stdout.write(jsonError(command, code, e, message));
    return code;
  }
}

/** A usage error's message; node:util parseArgs's own are cut to their first sentence. */
function usageMessage(e: unknown): string {
  const err = e as Error & { code?: string };
  // e.g. "Unknown option '--bogus'. To specify a positional argument starting with a '-', ...".
  if (!err.code?.startsWith('ERR_PARSE_ARGS_')) return err.message;
  const first = /^(.*?'[^']*'[^.]*)\./s.exec(err.message)?.[1] ?? err.message;
  return first.charAt(0).toLowerCase() + first.slice(1);
}

/** Prints a usage error for the command line as a whole. */
function usage(message: string): number {
  process.stderr.write(`kvm-gmem: ${message}\nsee 'kvm-gmem --help'\n`);
  return ExitCode.USAGE;
}
