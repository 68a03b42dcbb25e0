#!/usr/bin/env node
/**
 * The `kvm-gmem` command.
 *
 *   kvm-gmem info [--json] [--device PATH]   what this host's KVM offers guest_memfd users
 *   kvm-gmem selftest [--list] [--filter PATTERN] [--json] [--expect FILE] [--device PATH]
 *                                            the selftest suite, KTAP out (lib/selftest/)
 *   kvm-gmem exec --kernel IMAGE [VM options] -- COMMAND [ARG...]
 *                                            any command on another kernel (lib/host/kernel-vm.ts)
 * Every command also takes the VM options (--kernel IMAGE...): it then runs on that kernel.
 * @module
 */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { formatHostInfo, hostInfo } from '../host/info.js';
import { runInKernelVm, type KernelVmOptions, type VmAccel } from '../host/kernel-vm.js';
import { ExitCode, UsageError, exitCodeOf } from './exit.js';
import { selftestCommand } from './selftest.js';

const USAGE = `usage: kvm-gmem <command> [options]

commands:
  info [--json] [--device PATH]   KVM API version, capabilities, VM types, guest_memfd flags,
                                  memslot limit, and whether this process can open the device
  selftest [--list] [--filter PATTERN] [--json] [--expect FILE] [--device PATH]
                                  the kernel's guest_memfd selftests mirrored, plus the
                                  lifecycle cases; KTAP on stdout, progress on stderr when
                                  stdout is not a terminal; exit 0 pass, 1 fail, 4 all skipped

  exec --kernel IMAGE [VM options] -- COMMAND [ARG...]
                                  run any command on that kernel (e.g. npx vitest run)

VM options (any command): boot another kernel with virtme-ng and run the command there,
printing its output and exiting with its status as if it had run here
  --kernel IMAGE                  the kernel image (e.g. /usr/lib/modules/RELEASE/vmlinuz)
  --modules DIR                   a directory with lib/modules/RELEASE (default: the image's
                                  own tree, else /lib/modules)
  --kvm-module kvm_amd|kvm_intel  the KVM module loaded inside (default kvm_amd)
  --kvm-param NAME=VALUE          a parameter for it, e.g. npt=0 (repeatable)
  --vm-accel auto|kvm|tcg         KVM with nested virtualization, or QEMU's emulation (TCG);
                                  auto: KVM where this host's /dev/kvm can nest, else TCG
  --vm-memory SIZE, --vm-cpus N   the VM's memory (default 4G) and CPUs (default 2)
  --vm-numa N                     split them into N NUMA nodes (default 1)
  --vm-timeout SECONDS            kill the VM after this long (default 1800)

options:
  -h, --help                      this text

exit status: 0 done, 1 a test failed or the host cannot do it, 2 a wrong command line or
input file, 3 the command could not run (a failed system call, a VM that did not boot),
4 every selftest case skipped
`;

/** The VM options, taken out of any command's arguments. */
const VM_FLAGS = ['kernel', 'modules', 'kvm-module', 'kvm-param', 'vm-accel', 'vm-memory', 'vm-cpus', 'vm-numa', 'vm-timeout'] as const;

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
  const env: Record<string, string> = {};
  for (const k of ['KVM_GMEM_REQUIRE_KVM', 'KVM_GMEM_ADDON', 'CI']) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  const vm: KernelVmOptions = {
    kernel, accel: accel as VmAccel, env, kvmParams: got.get('kvm-param') ?? [],
    ...(process.env.KVM_GMEM_VM_CONSOLE === '1' ? { vngOutput: (b: Buffer) => void process.stderr.write(b) } : {}),
    ...(one('modules') !== undefined ? { modules: one('modules')! } : {}),
    ...(one('kvm-module') !== undefined ? { kvmModule: one('kvm-module')! } : {}),
    ...(one('vm-memory') !== undefined ? { memory: one('vm-memory')! } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(numaNodes !== undefined ? { numaNodes } : {}),
    ...(timeoutSec !== undefined ? { timeoutSec } : {}),
  };
  return { rest, vm };
}


/** Runs argv inside the VM and passes its stdout and exit status through. */
async function inVm(vm: KernelVmOptions, argv: string[]): Promise<number> {
  const r = await runInKernelVm(argv, { ...vm, stdout: (b) => void process.stdout.write(b) });
  return r.status;
}

function info(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'boolean', default: false }, device: { type: 'string' } },
    strict: true,
  });
  const report = hostInfo(values.device);
  process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatHostInfo(report));
  return report.canOpen ? ExitCode.OK : ExitCode.FAIL;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? ExitCode.USAGE : ExitCode.OK;
  }
  const { rest, vm } = takeVmOptions(args, command === 'exec');
  if (command === 'exec') {
    if (!vm) throw new UsageError('exec needs --kernel IMAGE');
    const cmd = rest[0] === '--' ? rest.slice(1) : rest;
    if (cmd.length === 0) throw new UsageError('exec needs a command after --');
    return inVm(vm, cmd);
  }
  if (vm) return inVm(vm, [process.execPath, fileURLToPath(import.meta.url), command, ...rest]);
  if (command === 'info') return info(rest);
  if (command === 'selftest') return selftestCommand(rest);
  process.stderr.write(`kvm-gmem: unknown command '${command}'\n\n${USAGE}`);
  return ExitCode.USAGE;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`kvm-gmem: ${(e as Error).message}\n`);
    process.exitCode = exitCodeOf(e);
  },
);
