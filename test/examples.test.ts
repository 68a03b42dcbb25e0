// The README's example runs as a user would run it, and prints what the kernel did.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openKvm, hangBound } from './kvm-host.js';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('examples/basics.mjs', () => {
  it('binds a guest_memfd, punches a page and shows a refusal', (ctx) => {
    openKvm(ctx).close();
    const r = spawnSync(process.execPath, ['examples/basics.mjs'], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^KVM API 12, guest_memfd flags 0x[0-9a-f]+$/m);
    expect(r.stdout).toMatch(/^slot 0: GPA 0x100000-0x300000 -> guest_memfd fd \d+, inode \d+$/m);
    expect(r.stdout).toMatch(/^after punch: byte 0 = 0x0, byte 4096 = 0xaa$/m);
    expect(r.stdout).toMatch(/^refused: EINVAL from KVM_CREATE_GUEST_MEMFD$/m);
  });
});

describe('examples/vmm.ts', () => {
  it('compiles, boots the hello guest from guest_memfd memory, prints its console, and exits cleanly', (ctx) => {
    openKvm(ctx).close();
    const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'examples'], { cwd: root, encoding: 'utf8' });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    for (const mode of [[], ['--sync']]) {
      const r = spawnSync(process.execPath, ['build/examples/vmm.js', '--memory', '8', ...mode], { cwd: root, encoding: 'utf8', timeout: hangBound(30_000) });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe('Hello from guest code on guest_memfd memory!\nbye\n');
      expect(r.stderr).toMatch(/^\[vmm\] guest memory: 8 MiB of guest_memfd/m);
      expect(r.stderr).toMatch(/^\[vmm\] guest SYNC: sum of the host's 59 bytes = 5503 \(host: 5503\) ok$/m);
      expect(r.stderr).toMatch(/^\[vmm\] guest DONE after [\d.]+ ms$/m);
    }
    const bad = spawnSync(process.execPath, ['build/examples/vmm.js', '--memory', '1'], { cwd: root, encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--memory must be/);
  });
});
