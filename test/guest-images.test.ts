// The guest programs: the build made an image for every guest/*.S, the images are what the
// sources and guest/mkimage.sh make now, and lib/guest-images.ts agrees with ucall.h.
// No guest runs here (that needs vCPUs); the disassembly shows the instructions are there.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  BENCH_PORT,
  CONSOLE_PORT,
  UCALL_MAX_ARGS,
  UCALL_MSG_LEN,
  UCALL_PORT,
  UCALL_STRUCT_SIZE,
  UcallCmd,
  UcallOffset,
  guestImage,
  guestImageNames,
  guestImagePath,
  type GuestImageName,
} from '../lib/guest/images.js';
import { addonPath } from '../lib/core/native.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const guestDir = join(root, 'guest');

/** True when `tool --version` runs. */
function have(tool: string): boolean {
  return spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
}
const haveObjdump = have('objdump');
const haveToolchain = haveObjdump && have('cc') && have('objcopy');
const noObjdump = 'objdump (binutils) is not installed on this machine';
const noToolchain = 'cc, objcopy and objdump are not all installed on this machine';

const scratch = mkdtempSync(join(tmpdir(), 'kvm-gmem-guest-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Runs guest/mkimage.sh on `src`; returns the image, or throws with the script's stderr. */
function mkimage(src: string, name: string): Uint8Array {
  const bin = join(scratch, `${name}.bin`);
  const r = spawnSync('sh', [join(guestDir, 'mkimage.sh'), src, join(scratch, `${name}.o`), bin], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mkimage.sh ${src} failed (${r.status}): ${r.stderr}`);
  return new Uint8Array(readFileSync(bin));
}

/** objdump's disassembly of a flat x86-64 image. */
function disassemble(image: Uint8Array, name: string): string {
  const file = join(scratch, `${name}.dis.bin`);
  writeFileSync(file, image);
  const r = spawnSync('objdump', ['-D', '-b', 'binary', '-m', 'i386:x86-64', file], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

describe('guest images', () => {
  it.each(guestImageNames)('%s.bin was built beside the addon: non-empty, under 4 KiB', (name) => {
    const path = guestImagePath(name);
    expect(path).toBe(join(addonPath, '..', 'guest', `${name}.bin`));
    expect(statSync(path).isFile()).toBe(true);
    const image = guestImage(name);
    expect(image).toBeInstanceOf(Uint8Array);
    expect(image.length).toBeGreaterThan(0);
    expect(image.length).toBeLessThan(4096);
    expect(image.length).toBe(statSync(path).size);
  });

  it('has one image name per guest/*.S, and a source per image name', () => {
    const sources = readdirSync(guestDir)
      .filter((f) => f.endsWith('.S'))
      .map((f) => f.slice(0, -2))
      .sort();
    expect(sources).toEqual([...guestImageNames].sort());
  });

  it('returns a fresh copy each call, so a caller cannot corrupt the cache', () => {
    const a = guestImage('hello');
    const b = guestImage('hello');
    expect(a).not.toBe(b);
    expect(a.buffer).not.toBe(b.buffer);
    const first = a[0]!;
    a.fill(0xcc);
    expect(guestImage('hello')[0]).toBe(first);
    expect(b[0]).toBe(first);
  });

  it('rejects an unknown name with a TypeError naming the valid ones', () => {
    for (const bad of ['nope', 'hello.bin', '../hello', '', 'constructor', 'toString', 42, undefined, null]) {
      expect(() => guestImage(bad as unknown as GuestImageName), String(bad)).toThrow(TypeError);
    }
    expect(() => guestImage('nope' as GuestImageName)).toThrow(/unknown guest image "nope".*port_loop/);
  });

  it('names the missing file and how to rebuild when the build made no images', async () => {
    // The same addon, seen from a directory without guest/ (as $KVM_GMEM_ADDON may point).
    const dir = mkdtempSync(join(scratch, 'addon-'));
    symlinkSync(addonPath, join(dir, 'kvm_gmem.node'));
    const saved = process.env.KVM_GMEM_ADDON;
    process.env.KVM_GMEM_ADDON = join(dir, 'kvm_gmem.node');
    try {
      vi.resetModules();
      const fresh = await import('../lib/guest/images.js');
      const path = join(dir, 'guest', 'halt.bin');
      expect(fresh.guestImagePath('halt')).toBe(path);
      let err: Error | undefined;
      try {
        fresh.guestImage('halt');
      } catch (e) {
        err = e as Error;
      }
      expect(err).toBeInstanceOf(Error);
      expect(err).not.toBeInstanceOf(TypeError);
      expect(err!.message).toContain(path);
      expect(err!.message).toContain('ENOENT');
      expect(err!.message).toContain('npm install');
      expect(err!.message).toContain('npm run build:cmake');
    } finally {
      if (saved === undefined) delete process.env.KVM_GMEM_ADDON;
      else process.env.KVM_GMEM_ADDON = saved;
      vi.resetModules();
    }
  });
});

describe('ucall.h and lib/guest-images.ts', () => {
  const header = readFileSync(join(guestDir, 'ucall.h'), 'utf8');
  const defines = new Map<string, number>();
  for (const m of header.matchAll(/^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b/gm)) {
    defines.set(m[1]!, Number(m[2]!));
  }

  it('define the same numbers, and ucall.h defines no number the library lacks', () => {
    const expected: Record<string, number> = {
      UCALL_PORT,
      CONSOLE_PORT,
      BENCH_PORT,
      UCALL_NONE: UcallCmd.NONE,
      UCALL_SYNC: UcallCmd.SYNC,
      UCALL_ABORT: UcallCmd.ABORT,
      UCALL_PRINTF: UcallCmd.PRINTF,
      UCALL_DONE: UcallCmd.DONE,
      UCALL_STRUCT_SIZE,
      UCALL_OFF_CMD: UcallOffset.CMD,
      UCALL_OFF_NARGS: UcallOffset.NARGS,
      UCALL_OFF_ARGS: UcallOffset.ARGS,
      UCALL_OFF_MSG: UcallOffset.MSG,
      UCALL_MAX_ARGS,
      UCALL_MSG_LEN,
    };
    expect(Object.fromEntries(defines)).toEqual(expected);
  });

  // The numbers themselves are ucall.h's (above); here, that they make one struct.
  it('describe a consistent struct ucall: fields back to back in order, 8-byte aligned', () => {
    expect(UcallOffset.CMD).toBe(0);
    expect(UcallOffset.NARGS).toBe(UcallOffset.CMD + 8);
    expect(UcallOffset.ARGS).toBe(UcallOffset.NARGS + 8);
    expect(UcallOffset.ARGS + 8 * UCALL_MAX_ARGS).toBe(UcallOffset.MSG);
    expect(UcallOffset.MSG + UCALL_MSG_LEN).toBe(UCALL_STRUCT_SIZE);
    expect(UCALL_STRUCT_SIZE % 8).toBe(0);
  });
});

describe('guest images are the sources, assembled', () => {
  it.for(guestImageNames)('%s.bin is what mkimage.sh makes from its source now (position-independent, no relocations)', (name, ctx) => {
    if (!haveToolchain) ctx.skip(noToolchain);
    // A difference means the build's image is stale (rebuild) or another tool made it.
    expect(guestImage(name), `${guestImagePath(name)} vs guest/${name}.S`).toEqual(mkimage(join(guestDir, `${name}.S`), name));
  });

  it('ucall.h: every macro assembles without relocations, with any register as argument', (ctx) => {
    if (!haveToolchain) ctx.skip(noToolchain);
    const src = join(scratch, 'macros.S');
    writeFileSync(
      src,
      [
        `#include "${join(guestDir, 'ucall.h')}"`,
        '\t.code64',
        '\t.text',
        '1:\tGUEST_SYNC0',
        '\tGUEST_SYNC1 %rax',
        '\tGUEST_SYNC2 %rdx, $-1',
        '\tGUEST_SYNC3 %rsp, %rdi, %r15',
        '\tGUEST_SYNC4 %rax, %rcx, %rdx, %rsi',
        '\tGUEST_SYNC5 $1, $2, $3, $4, $5',
        '\tGUEST_SYNC6 %r8, %r9, %r10, %r11, %r12, %r13',
        '\tGUEST_UCALL UCALL_NONE',
        '\tGUEST_PRINTF text',
        '\tGUEST_ABORT text',
        '\tGUEST_ABORT text, %rax, %rdx, $7',
        '\tGUEST_ABORT text, %rax, %rdx, $7, %rcx, %r8, $-1',
        '\tCONSOLE_PUTS text',
        '\tGUEST_DONE',
        '\tjmp 1b',
        '\tHALT_LOOP',
        'text:\t.asciz "some text"',
        '\tUCALL_STRUCT',
        '',
      ].join('\n'),
    );
    const image = mkimage(src, 'macros');
    // The struct is the image's last UCALL_STRUCT_SIZE bytes, 64-byte aligned, zeroed.
    expect(image.length % 64).toBe(0);
    expect(image.subarray(image.length - UCALL_STRUCT_SIZE).every((b) => b === 0)).toBe(true);
  });
});

describe('guest images, disassembled', () => {
  // A few instructions each program cannot do without (objdump's AT&T spelling).
  const must: Record<GuestImageName, RegExp[]> = {
    hello: [/\tout +%al,\(%dx\)/, /\tout +%eax,\(%dx\)/, /\tmov +\$0xe9,%edx/, /\tmov +\$0x1000,%edx/, /\thlt/],
    port_loop: [/\tout +%al,\$0x10/, /\thlt/],
    memtest: [/\trep stos/, /\tout +%eax,\(%dx\)/, /\tmov +\$0x1000,%edx/, /\thlt/],
    spin: [/\tincq +\(%rdi\)/, /\tpause/],
    rendezvous: [/\tmovq +\$0x1,\(%rdi\)/, /\tcmpq +\$0x0,\(%rsi\)/, /\tpause/, /\tout +%eax,\(%dx\)/, /\thlt/],
    devices: [/\tin +\(%dx\),%eax/, /\tmov +\(%rdi\),%rax/, /\tmovb +\$0x5a,\(%rdi\)/, /\tmovl +\$0x12345678,0x8\(%rdi\)/, /\thlt/],
    fault: [/^ +0:\t0f 0b +\tud2/m],
    halt: [/^ +0:\tf4 +\thlt/m],
    upgrade: [/\trep stos %rax,%es:\(%rdi\)/, /\trepz scas %es:\(%rdi\),%rax/, /\tincq +\(%r15\)/, /\tout +%eax,\(%dx\)/, /\thlt/],
    readpages: [/\tmov +\(%rdi\),%rax/, /\tadd +\$0x1000,%rdi/, /\tout +%eax,\(%dx\)/, /\thlt/],
    private_mem_conversions: [
      /\tvmcall/, /\tvmmcall/, /\tmov +\$0xc,%eax/, /\tshr +\$0xc,%rcx/, /\trep stos %al,%es:\(%rdi\)/,
      /\trepz scas %es:\(%rdi\),%rax/, /\tout +%eax,\(%dx\)/, /\thlt/,
    ],
  };

  it.for(guestImageNames)('%s.bin has the instructions it is made of', (name, ctx) => {
    if (!haveObjdump) ctx.skip(noObjdump);
    const text = disassemble(guestImage(name), name);
    for (const re of must[name]) expect(text).toMatch(re);
  });
});
