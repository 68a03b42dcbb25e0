/**
 * The `--help` texts of the `kvm-gmem` command and its subcommands, and the shipped file they name.
 * @module
 */
import { fileURLToPath } from 'node:url';

/**
 * The expectation file shipped with the package (package.json "files" lists it), found from this
 * module in dist/cli/ or lib/cli/: what `selftest` applies unless `--expect` says otherwise.
 */
export const DEFAULT_EXPECTATIONS = fileURLToPath(new URL('../../lib/selftest/expected-failures.txt', import.meta.url));

/** The VM options: any command takes them, `exec` needs them. */
export const VM_OPTIONS = `VM options: boot another kernel with virtme-ng (this system's files shared read-only), load
KVM inside, run the command there, print its output and exit with its status as if it had run here
  --kernel IMAGE                  the kernel image (e.g. /usr/lib/modules/RELEASE/vmlinuz)
  --modules DIR                   a directory with lib/modules/RELEASE (default: the image's
                                  own tree, else /lib/modules)
  --kvm-module kvm_amd|kvm_intel  the KVM module loaded inside (default kvm_amd)
  --kvm-param NAME=VALUE          a parameter for it, e.g. npt=0 (repeatable)
  --vm-accel auto|kvm|tcg         KVM with nested virtualization, or QEMU's emulation (TCG);
                                  auto: KVM where this host's /dev/kvm can nest, else TCG
  --vm-memory SIZE                the VM's memory (default 4GiB): 4GiB, 512MiB (or 4G, 512M;
                                  binary units, B K M G T with or without iB); a bare
                                  number is MiB
  --vm-cpus N                     the VM's CPUs (default 2)
  --vm-numa N                     split memory and CPUs into N NUMA nodes (default 1)
  --vm-timeout SECONDS            kill the VM after this long (default 1800)
`;

/** The --json paragraph, the same for every command that has --json. */
const JSON_NOTE = `--json: stdout carries one JSON object and nothing else (progress and logs go to stderr):
{ "command": ..., "version": ..., "exitCode": ..., then the command's own fields }; a
command that ends in an error writes { ..., "error": { "kind", "message", "code"?, "hint"? } }.`;

/** Exit statuses, one table for every command. */
const EXIT = `exit status: 0 done (every test passed), 1 a test failed or the host cannot do it, 2 a wrong
command line or input file, 3 the command could not run (a failed system call, a VM that did not
boot), 4 every selftest case skipped`;

/** `kvm-gmem --help`. */
export const MAIN_HELP = `usage: kvm-gmem <command> [options]
       kvm-gmem <command> --help         the command's own options
       kvm-gmem --version

commands:
  info       what this host's KVM offers guest_memfd users (API version, capabilities, VM types,
             guest_memfd flags, memslots, paging), or why this process cannot open the device
  selftest   the kernel's guest_memfd and private-memory selftests mirrored case by case, plus
             lifecycle cases; KTAP on stdout
  exec       run any command on another kernel, in a VM (e.g. node my-vmm.js)

Every command also takes the VM options (see kvm-gmem exec --help): with --kernel IMAGE it
runs on that kernel.

options:
  -h, --help     this text
  --version      the version of kvm-gmem

${JSON_NOTE}

${EXIT}
`;

/** `kvm-gmem info --help`. */
export const INFO_HELP = `usage: kvm-gmem info [--json] [--device PATH] [VM options]

What this host's KVM offers guest_memfd users: the API version, every capability on the device
and on a default VM, the VM types, the guest_memfd flags, the memslot limit and the paging mode.
When the device cannot be opened: why (no device, which KVM modules are loaded, whether the CPU
offers VT-x/AMD-V; or its owner, group and mode and whether this user is in that group) and the
command that fixes it.

options:
  --device PATH   the KVM device (default /dev/kvm)
  --json          the report as JSON (below)
  -h, --help      this text

${JSON_NOTE}

exit status: 0 the device opened, 1 it could not be opened, 2 a wrong command line
`;

/** `kvm-gmem selftest --help`; `expectations` is the path of the list shipped with the package. */
export function selftestHelp(expectations: string): string {
  return `usage: kvm-gmem selftest [--list] [--filter PATTERN] [--json] [--expect FILE|none]
                         [--device PATH] [VM options]

The kernel's guest_memfd and private-memory selftests (guest_memfd_test, set_memory_region_test,
pre_fault_memory_test, x86/private_mem_conversions_test, x86/private_mem_kvm_exits_test) mirrored
case by case, for every VM type and guest_memfd flag combination this host offers, plus the
lifecycle cases. KTAP on stdout; one progress line per case on stderr when stdout is not a terminal.
Without a usable device every case is skipped, with the reason and the fix.

options:
  --list              print the case names (with --json, each case described) and run nothing
  --filter PATTERN    only the matching cases: a PATTERN with * matches whole names, one
                      without matches any name containing it; several, comma-separated
  --expect FILE       expected failures, one per line (PATTERN -- FAILURE -- REASON): a listed
                      case that fails that way is XFAIL, one that passes is XPASS (a failure)
                      default: the list shipped with kvm-gmem (known kernel and host limits),
                      ${expectations}
  --expect none       no expected failures
  --device PATH       the KVM device (default /dev/kvm)
  --json              the whole report as JSON instead of KTAP: host, cases with their
                      diagnostics, totals (below)
  -h, --help          this text

environment:
  KVM_GMEM_REQUIRE_KVM=1   a host without a usable device is an error (exit 1), not a skip

${JSON_NOTE}

exit status: 0 every case passed (or failed as expected), 1 a case failed or passed unexpectedly,
2 a wrong command line or expectation file, 3 the suite could not run, 4 every case skipped
`;
}

/** `kvm-gmem exec --help`. */
export const EXEC_HELP = `usage: kvm-gmem exec --kernel IMAGE [VM options] [--] COMMAND [ARG...]

Runs COMMAND on the kernel IMAGE, in a VM, e.g.
  kvm-gmem exec --kernel /boot/vmlinuz-6.18.0 --vm-numa 2 -- node my-vmm.js
Everything from COMMAND on is the command's (its own --help included).

${VM_OPTIONS}
options:
  -h, --help                      this text

exit status: COMMAND's own; 2 a wrong command line, 3 the VM did not boot or timed out
`;
