#!/usr/bin/env node
/**
 * The `kvm-gmem` command.
 *
 *   kvm-gmem info [--json] [--device PATH]   what this host's KVM offers guest_memfd users
 * @module
 */
import { parseArgs } from 'node:util';
import { formatHostInfo, hostInfo } from './info.js';

const USAGE = `usage: kvm-gmem <command> [options]

commands:
  info [--json] [--device PATH]   KVM API version, capabilities, VM types, guest_memfd flags,
                                  memslot limit, and whether this process can open the device

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

function main(argv: string[]): number {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'info') return info(rest);
  process.stderr.write(`kvm-gmem: unknown command '${command}'\n\n${USAGE}`);
  return 2;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`kvm-gmem: ${(e as Error).message}\n`);
  process.exitCode = 2;
}
