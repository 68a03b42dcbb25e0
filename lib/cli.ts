#!/usr/bin/env node
/**
 * The `kvm-gmem` command.
 *
 *   kvm-gmem info [--json] [--device PATH]   what this host's KVM offers guest_memfd users
 *   kvm-gmem selftest [--list] [--filter PATTERN] [--json] [--expect FILE] [--device PATH]
 *                                            the selftest suite, KTAP out (lib/selftest/)
 *   kvm-gmem upgrade-experiment [--sizes LIST] [--runs N] [--json] [--chart FILE]
 *                                            live VMM upgrade between two processes (lib/upgrade/)
 * @module
 */
import { parseArgs } from 'node:util';
import { formatHostInfo, hostInfo } from './info.js';
import { selftestCommand } from './selftest/command.js';
import { upgradeExperimentCommand } from './upgrade/command.js';

const USAGE = `usage: kvm-gmem <command> [options]

commands:
  info [--json] [--device PATH]   KVM API version, capabilities, VM types, guest_memfd flags,
                                  memslot limit, and whether this process can open the device
  selftest [--list] [--filter PATTERN] [--json] [--expect FILE] [--device PATH]
                                  the kernel's guest_memfd selftests mirrored, plus the
                                  lifecycle cases; KTAP on stdout, progress on stderr when
                                  stdout is not a terminal; exit 0 pass, 1 fail, 4 all skipped
  upgrade-experiment [--sizes LIST] [--runs N] [--json] [--chart FILE]
                                  hand a running guest from one VMM process to another over a
                                  Unix socket; the blackout per memory size (see --help there)

options:
  -h, --help                      this text
`;

function info(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'boolean', default: false }, device: { type: 'string' } },
    strict: true,
  });
  const report = hostInfo(values.device);
  process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatHostInfo(report));
  return report.canOpen ? 0 : 1;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'info') return info(rest);
  if (command === 'selftest') return selftestCommand(rest);
  if (command === 'upgrade-experiment') return upgradeExperimentCommand(rest);
  process.stderr.write(`kvm-gmem: unknown command '${command}'\n\n${USAGE}`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`kvm-gmem: ${(e as Error).message}\n`);
    process.exitCode = 2;
  },
);
