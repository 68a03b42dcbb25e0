// Sizes on the command line: units (binary), a bare number in MiB as before, clear usage errors.
import { spawnSync } from 'node:child_process';
import { describe, expect, it, vi } from 'vitest';
import { upgradeExperimentCommand } from '../experiments/upgrade/command.js';
import { UsageError } from '../lib/cli/exit.js';
import { parseSize, parseSizeList, wholeMiB } from '../lib/cli/sizes.js';
import { CLI } from './paths.js';

const MiB = 2 ** 20;

describe('parseSize', () => {
  it.each([
    ['4096', 4096 * MiB], ['64MiB', 64 * MiB], ['64mib', 64 * MiB], ['2M', 2 * MiB], ['1GiB', 1024 * MiB], ['1G', 1024 * MiB],
    ['1.5GiB', 1536 * MiB], ['512K', 512 * 1024], ['512KiB', 512 * 1024], ['4096B', 4096], ['1TiB', 2 ** 40], [' 64 MiB ', 64 * MiB],
  ])('%j is %d bytes', (text, bytes) => {
    expect(parseSize(text, 'sizes')).toBe(bytes);
  });

  it('a bare number is in the unit the option says (MiB unless told)', () => {
    expect(parseSize('3', 'x', 1)).toBe(3);
    expect(parseSize('3', 'x')).toBe(3 * MiB);
  });

  it.each([
    ['64MB', /--sizes: '64MB' is not a size \(write 64MiB or 64M: units are binary\)/],
    ['1GB', /write 1GiB or 1G/],
    ['64X', /--sizes: '64X' is not a size; expected a number with a unit: B, K\/KiB, M\/MiB, G\/GiB, T\/TiB/],
    ['', /is not a size/], ['MiB', /is not a size/], ['-1M', /is not a size/], ['0x10M', /is not a size/], ['4096BiB', /is not a size/],
    ['0', /'0' is not a positive whole number of bytes/], ['0.3K', /not a positive whole number of bytes/],
    ['99999999999T', /not a positive whole number of bytes/],
  ])('%j is a usage error: %s', (text, message) => {
    expect(() => parseSize(text, 'sizes')).toThrow(UsageError);
    expect(() => parseSize(text, 'sizes')).toThrow(message);
  });

  it('lists: comma-separated, each with its own unit', () => {
    expect(parseSizeList('64MiB,256MiB', 'sizes')).toEqual([64 * MiB, 256 * MiB]);
    expect(parseSizeList('64, 1GiB,2M', 'sizes')).toEqual([64 * MiB, 1024 * MiB, 2 * MiB]);
    expect(() => parseSizeList(',', 'sizes')).toThrow(/--sizes: expected a comma-separated list of sizes/);
    expect(() => parseSizeList('64MiB,2MB', 'sizes')).toThrow(/'2MB' is not a size/);
  });

  it('wholeMiB refuses a size that is not a whole number of MiB', () => {
    expect(wholeMiB(3 * MiB, 'vm-memory', '3M')).toBe(3);
    expect(() => wholeMiB(1536, 'vm-memory', '1.5K')).toThrow(/--vm-memory: '1.5K' is not a whole number of MiB/);
  });
});

describe('kvm-gmem --vm-memory', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

  it('takes units: a bad size is a usage error (2) before anything boots', () => {
    for (const [size, message] of [['4GB', /--vm-memory: '4GB' is not a size \(write 4GiB or 4G/], ['1.5K', /not a whole number of MiB/], ['lots', /is not a size/]] as const) {
      const r = run('info', '--kernel', '/nonexistent/vmlinuz', '--vm-memory', size);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/see 'kvm-gmem info --help'/);
    }
  });

  it('accepts 4GiB, 4G, 2048MiB and a bare 4096 (MiB): the run gets as far as the kernel image', () => {
    for (const size of ['4GiB', '4G', '2048MiB', '4096']) {
      const r = run('info', '--kernel', '/nonexistent/vmlinuz', '--vm-memory', size);
      expect(r.status, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/--kernel \/nonexistent\/vmlinuz: no such file|not found on PATH/);
    }
  });
});

describe('npm run upgrade-experiment -- --sizes', () => {
  /** Runs the experiment's command line in this process; only usage errors here, so nothing runs. */
  async function usage(...args: string[]): Promise<{ code: number; stderr: string }> {
    let stderr = '';
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk);
      return true;
    });
    try {
      return { code: await upgradeExperimentCommand(args), stderr };
    } finally {
      spy.mockRestore();
    }
  }

  it('takes units: 64MiB,256MiB and 1GiB get as far as the range check, as bare MiB do', async () => {
    // Before: "--sizes must be a comma-separated list of whole MiB; got '64MiB,256MiB'". Each list
    // ends with 3 MiB (odd), refused by the range check after every size was read.
    for (const list of ['64MiB,256MiB,3', '1GiB,2M,3', '64,3', '1G,3MiB']) {
      const r = await usage('--sizes', list);
      expect(r.code, list).toBe(2);
      expect(r.stderr, list).toMatch(/^upgrade-experiment: memory sizes must be even numbers of MiB from 2 to 4032/);
    }
  });

  it('a bad size is a usage error that says how to write it', async () => {
    const mb = await usage('--sizes', '64MB');
    expect(mb.code).toBe(2);
    expect(mb.stderr).toBe("upgrade-experiment: --sizes: '64MB' is not a size (write 64MiB: units are binary); expected a whole number with M/MiB or G/GiB, or bare MiB\n");
    expect((await usage('--sizes', '1.5GiB')).stderr).toMatch(/'1\.5GiB' is not a size/);
    expect((await usage('--sizes', ',')).stderr).toMatch(/--sizes must be a comma-separated list of sizes/);
  });
});
