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
