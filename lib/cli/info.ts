/**
 * `kvm-gmem info [--json] [--device PATH]`.
 * @module
 */
import { parseArgs } from 'node:util';
import { formatHostInfo, hostInfo } from '../host/info.js';
import { ExitCode } from './exit.js';
import { jsonOutput } from './json.js';

/** Runs the command; returns the exit code (0 the device opened, 1 it did not). */
export function infoCommand(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'boolean', default: false }, device: { type: 'string' } },
    strict: true,
  });
  const report = hostInfo(values.device);
  const code = report.canOpen ? ExitCode.OK : ExitCode.FAIL;
  process.stdout.write(values.json ? jsonOutput('info', code, report) : formatHostInfo(report));
  return code;
}
