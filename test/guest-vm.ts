/**
 * A small VM for guest tests: one guest_memfd (MMAP|INIT_SHARED) bound at guest-physical 0 with
 * its own mapping as userspace_addr (the binding that runs guest code on this host), and vCPUs
 * booted into long mode from the guest images the build assembled.
 *
 * Guest-physical layout (identity mapped, 1 GiB):
 *   0x1000 .. 0x4000     page tables (PML4, PDPT, one PD)
 *   0x10000 * (1 + i)    vCPU i's copy of its image (each has its own struct ucall)
 *   0x90000 + 0x10000*i  vCPU i's stack top
 *   DATA (1 MiB) ..      free for the test
 */
import type { TestContext } from 'vitest';
import { bootGuest, guestImage, type GuestImageName } from '../lib/guest/index.js';
import { Cap, GuestMemfdFlag, type GuestMemfd, type Kvm, type Mapping, type Vcpu, type Vm } from '../lib/index.js';
import { needCap, openKvm } from './kvm-host.js';
import { ROOT } from './paths.js';

export const MiB = 1 << 20;
export const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
export const PAGE_TABLES = 0x1000;
export const DATA = 1 * MiB;

/** A VM with guest memory and a way to boot vCPUs. Dispose closes everything. */
export interface GuestVm extends Disposable {
  kvm: Kvm;
  vm: Vm;
  gmem: GuestMemfd;
  map: Mapping;
  /** The guest memory, host view (the whole slot). */
  mem: Uint8Array;
  /** Creates vCPU `id` and boots `image` on it with `args` in rdi, rsi, rdx, rcx. */
  boot(id: number, image: GuestImageName, args?: readonly (number | bigint)[]): Vcpu;
}

export function imageAddress(id: number): number {
  return 0x10000 * (1 + id);
}

/** Opens KVM and builds the VM, or skips/fails the test when the host lacks what it needs. */
export function guestVm(ctx: TestContext, memory = 4 * MiB): GuestVm {
  const kvm = openKvm(ctx);
  needCap(ctx, kvm, Cap.USER_MEMORY2, 'USER_MEMORY2');
  needCap(ctx, kvm, Cap.GUEST_MEMFD, 'GUEST_MEMFD');
  const vm = kvm.createVm();
  const flags = BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
  needCap(ctx, { checkExtension: () => Number((flags & SHARED) === SHARED) }, Cap.GUEST_MEMFD_FLAGS, 'GUEST_MEMFD_FLAGS MMAP|INIT_SHARED');
  const gmem = vm.createGuestMemfd({ size: memory, flags: SHARED });
  const map = gmem.map();
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: memory, userspaceAddr: map, guestMemfd: gmem });
  const vcpus: Vcpu[] = [];
  return {
    kvm, vm, gmem, map, mem: map.bytes,
    boot(id, image, args = []) {
      const vcpu = vm.createVcpu(id);
      vcpus.push(vcpu);
      bootGuest(vcpu, {
        image: guestImage(image), loadAt: imageAddress(id), stack: 0x90000 + 0x10000 * id,
        pageTables: PAGE_TABLES, args,
      });
      return vcpu;
    },
    [Symbol.dispose]() {
      for (const v of vcpus) v.close();
      map.close();
      gmem.close();
      vm.close();
      kvm.close();
    },
  };
}

/**
 * Module source for a child process or a Worker, on the built package (dist/): `vm` with 4 MiB of
 * guest memory (`gmem`, mapped as `map`, bound at guest-physical 0) and vCPU 0 as `vcpu`, which
 * `boot(image, args)` boots as guestVm's boot(0, ...) does. It imports only the modules it uses
 * (all of the package takes seconds per Worker under emulation).
 */
export function guestSetupSource(): string {
  const lib = (name: string) => JSON.stringify(`${ROOT}dist/${name}.js`);
  return `
    import { Kvm } from ${lib('kvm/kvm')};
    import { GuestMemfdFlag } from ${lib('core/constants')};
    import { bootGuest } from ${lib('guest/boot')};
    import { guestImage } from ${lib('guest/images')};
    const vm = Kvm.open().createVm();
    const gmem = vm.createGuestMemfd({ size: 4 << 20, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
    const map = gmem.map();
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: map, guestMemfd: gmem });
    const vcpu = vm.createVcpu(0);
    const boot = (image, args) => bootGuest(vcpu, {
      image: guestImage(image), loadAt: ${imageAddress(0)}, stack: 0x90000, pageTables: ${PAGE_TABLES}, args,
    });
  `;
}
