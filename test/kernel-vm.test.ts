// Running a command on another kernel (lib/kernel-vm.ts): what can be checked without booting one.
// The boots themselves run in CI (.ci/run): the selftest suite and npm test on Debian's newest
// kernel, with nested and with shadow paging.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { kernelImageRelease, KernelVmError, modulesRoot, numaArgs } from '../lib/host/kernel-vm.js';
import { CLI } from './paths.js';

const scratch = mkdtempSync(join(tmpdir(), 'kvm-gmem-kvm-'));

/** A file with a bzImage setup header whose kernel_version string is `release`. */
function fakeBzImage(release: string): string {
  const b = Buffer.alloc(0x1000);
  b.writeUInt32LE(0x53726448, 0x202); // "HdrS"
  b.writeUInt16LE(0x400 - 0x200, 0x20e); // kernel_version, relative to 0x200
  b.write(`${release} (builder@host) #1 SMP`, 0x400, 'latin1');
  const p = join(scratch, `vmlinuz-${release}`);
  writeFileSync(p, b);
  return p;
}

const cli = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });

describe('kernel images and module trees', () => {
  it('reads the release from a bzImage header, and nothing from other files', () => {
    expect(kernelImageRelease(fakeBzImage('7.2.13+deb14-amd64'))).toBe('7.2.13+deb14-amd64');
    const other = join(scratch, 'not-a-kernel');
    writeFileSync(other, Buffer.alloc(0x1000));
    expect(kernelImageRelease(other)).toBeUndefined();
  });

  it('finds the modules tree around a Debian image, a given root or release directory, and refuses a wrong one', () => {
    const root = join(scratch, 'root', 'usr');
    const rel = '7.2.13+deb14-amd64';
    mkdirSync(join(root, 'lib/modules', rel), { recursive: true });
    const image = join(root, 'lib/modules', rel, 'vmlinuz');
    writeFileSync(image, '');
    expect(modulesRoot(image, rel)).toBe(root);
    expect(modulesRoot('/elsewhere/bzImage', rel, root)).toBe(root);
    expect(modulesRoot('/elsewhere/bzImage', rel, join(root, 'lib/modules', rel))).toBe(root);
    expect(() => modulesRoot('/elsewhere/bzImage', rel, scratch)).toThrow(KernelVmError);
  });

  it('splits memory and CPUs into NUMA nodes for vng', () => {
    expect(numaArgs('4G', 2, 1)).toEqual([]);
    expect(numaArgs('4G', 2, 2)).toEqual(['--numa', '2048M,cpus=0', '--numa', '2048M,cpus=1']);
    expect(numaArgs('6G', 4, 2)).toEqual(['--numa', '3072M,cpus=0,cpus=2', '--numa', '3072M,cpus=1,cpus=3']);
    expect(() => numaArgs('4G', 1, 2)).toThrow(/do not split/);
    expect(() => numaArgs('4.5G', 2, 2)).toThrow(/whole number/);
  });
});

describe('the VM options on the command line', () => {
  it('are usage errors without --kernel or with bad values (exit 2)', () => {
    const noKernel = cli(['selftest', '--kvm-param', 'npt=0']);
    expect(noKernel.status).toBe(2);
    expect(noKernel.stderr).toMatch(/--kvm-param goes with --kernel IMAGE/);
    const accel = cli(['info', '--kernel', '/x', '--vm-accel', 'fast']);
    expect(accel.status).toBe(2);
    expect(accel.stderr).toMatch(/--vm-accel must be auto, kvm or tcg/);
    const exec = cli(['exec', '--kernel', '/x']);
    expect(exec.status).toBe(2);
    expect(exec.stderr).toMatch(/^kvm-gmem exec: no command to run: put it after the VM options \(and --\)$/m);
    for (const args of [['selftest', '--kernel', '--vm-cpus', '2'], ['selftest', '--kernel='], ['info', '--kernel', '--']]) {
      const r = cli(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/--kernel needs a value/);
    }
  });

  it('exec leaves the options of the command it runs alone', () => {
    // Parsed without a usage error: it gets as far as looking for vng (exit 3 with an empty PATH).
    const r = cli(['exec', '--kernel', fakeBzImage('7.2.1'), 'echo', '--vm-cpus', '9', '--kernel', 'x'], { PATH: join(scratch, 'empty-path') });
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/vng not found/);
  });

  it('without vng on PATH: says what to install (exit 3)', () => {
    const r = cli(['selftest', '--kernel', fakeBzImage('7.2.0')], { PATH: join(scratch, 'empty-path') });
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/vng not found on PATH\. virtme-ng boots kernels for this: install it/);
  });

  it('a kernel image that does not exist is refused before any VM starts (exit 3)', () => {
    // vng may be missing here too: then that is what is reported, which is also a refusal.
    const r = cli(['info', '--kernel', join(scratch, 'missing')]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/no such file|not found on PATH/);
  });
});
