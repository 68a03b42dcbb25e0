// `kvm-gmem info`, run as a user runs it: the built CLI in a child process.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, VmType } from '../lib/index.js';
import { type HostInfo } from '../lib/selftest/index.js';
import { openKvm } from './kvm-host.js';

import { ExitCode, UsageError, exitCodeOf } from '../lib/cli/exit.js';
import { KvmError } from '../lib/index.js';

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

describe('kvm-gmem info', () => {
  it('--json reports what the kernel answers, capability by capability', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    const r = run('info', '--json');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as HostInfo;
    expect(info.canOpen).toBe(true);
    expect(info.apiVersion).toBe(kvm.apiVersion);
    expect(info.capabilities.map((c) => c.name)).toEqual(Object.keys(Cap));
    for (const c of info.capabilities) {
      expect(c.number).toBe(Cap[c.name]);
      expect(c.system, c.name).toBe(kvm.checkExtension(c.number));
      expect(c.vm, c.name).toBe(vm.checkExtension(c.number));
    }
    const flags = vm.checkExtension(Cap.GUEST_MEMFD_FLAGS);
    expect(info.guestMemfdFlags?.value).toBe(flags);
    for (const [name, bit] of Object.entries(GuestMemfdFlag)) {
      expect(info.guestMemfdFlags?.names.includes(name)).toBe((BigInt(flags) & bit) !== 0n);
    }
    expect(info.memslots).toBe(vm.checkExtension(Cap.NR_MEMSLOTS));
    expect(info.vmTypes?.names).toContain('DEFAULT');
    const types = kvm.checkExtension(Cap.VM_TYPES);
    for (const [name, t] of Object.entries(VmType)) {
      if (types & (1 << t)) expect(info.vmTypes?.names).toContain(name);
    }
    // Every other type offered has its own answers, asked on a VM of that type.
    for (const [name, t] of Object.entries(VmType)) {
      const offered = t !== VmType.DEFAULT && (types & (1 << t)) !== 0;
      for (const c of info.capabilities) expect(name in c.byVmType, `${c.name} ${name}`).toBe(offered);
      if (!offered) continue;
      using other = kvm.createVm(t);
      for (const c of info.capabilities) expect(c.byVmType[name], `${c.name} on ${name}`).toBe(other.checkExtension(c.number));
    }
  });

  it('prints a readable report', (ctx) => {
    using kvm = openKvm(ctx);
    const r = run('info');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^api version\s+12$/m);
    expect(r.stdout).toMatch(/^device\s+\/dev\/kvm: opened by this process$/m);
    // One column per VM type beyond the default one the host offers.
    const more = Object.entries(VmType).filter(([, t]) => t !== VmType.DEFAULT && (kvm.checkExtension(Cap.VM_TYPES) & (1 << t)) !== 0);
    expect(r.stdout).toMatch(new RegExp(`^GUEST_MEMFD\\s+234\\s+\\d+\\s+\\d+${'\\s+\\d+'.repeat(more.length)}$`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^capability\\s+num\\s+system\\s+vm${more.map(([n]) => `\\s+${n}`).join('')}$`, 'm'));
    expect(r.stdout).toMatch(/^gmem flags\s+/m);
  });

  it('says what to do when the device cannot be opened, and exits 1', () => {
    const r = run('info', '--device', '/nonexistent/kvm');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/cannot be opened/);
    // What to do, on its own line: where the device is, or which module is missing (test/cli-device.test.ts).
    expect(r.stdout).toMatch(/^hint {10}(there is no \/nonexistent\/kvm|\/nonexistent\/kvm does not exist|the kernel has a KVM device)/m);
    const j = run('info', '--json', '--device', '/nonexistent/kvm');
    expect(j.status).toBe(1);
    expect(JSON.parse(j.stdout)).toMatchObject({ canOpen: false, openError: { code: 'ENOENT' } });
    expect((JSON.parse(j.stdout) as HostInfo).openError?.hint).toBe(/^hint {10}(.*)$/m.exec(r.stdout)?.[1]);
  });

  it('rejects unknown commands and options with usage (exit 2)', () => {
    const r = run('frobnicate');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(run('info', '--bogus').status).toBe(2);
    expect(run('--help').stdout).toMatch(/usage: kvm-gmem/);
  });
});

describe('kvm-gmem exit status', () => {
  it('tells a wrong command line or input file (2) from a command that could not run (3)', () => {
    expect(run('selftest', '--bogus').status).toBe(ExitCode.USAGE);
    const missing = run('selftest', '--expect', '/nonexistent/expectations.txt');
    expect(missing.status, missing.stderr).toBe(ExitCode.USAGE);
    expect(missing.stderr).toMatch(/ENOENT/);
    expect(run().status).toBe(ExitCode.USAGE);
    expect(exitCodeOf(new UsageError('x'))).toBe(ExitCode.USAGE);
    // Before: every error that ended a command exited 2, a failed system call included.
    const sys = new KvmError({ errno: -5, syscall: 'ioctl', detail: 'fd 3', description: 'Input/output error' });
    expect(exitCodeOf(sys)).toBe(ExitCode.RUNTIME);
    expect(exitCodeOf(new Error('anything else'))).toBe(ExitCode.RUNTIME);
  });
});
