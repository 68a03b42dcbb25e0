// The README's example: a VM whose memory is a guest_memfd, written by the host through a
// zero-copy mapping, bound as a memslot, punched, and released. Run: node examples/basics.mjs
// (In TypeScript, `using kvm = Kvm.open()` replaces the try/finally: every object is Disposable.)
import { Kvm, Cap, GuestMemfdFlag, KvmError } from 'kvm-gmem';

const kvm = Kvm.open(); // /dev/kvm
const vm = kvm.createVm();
const size = 2 * 1024 * 1024;
const gmem = vm.createGuestMemfd({ size, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
const mem = gmem.map(); // MAP_SHARED; mem.bytes is a Uint8Array over guest memory itself
try {
  console.log(`KVM API ${kvm.apiVersion}, guest_memfd flags 0x${vm.checkExtension(Cap.GUEST_MEMFD_FLAGS).toString(16)}`);

  mem.bytes.fill(0xaa);
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0x100000, memorySize: size, userspaceAddr: mem, guestMemfd: gmem });
  console.log(`slot 0: GPA 0x100000-0x${(0x100000 + size).toString(16)} -> guest_memfd fd ${gmem.fd}, inode ${gmem.stat().ino}`);

  gmem.punchHole(0, 4096); // the first page is freed: host and guest read zeros there now
  console.log(`after punch: byte 0 = 0x${mem.bytes[0].toString(16)}, byte 4096 = 0x${mem.bytes[4096].toString(16)}`);

  try {
    vm.createGuestMemfd({ size: 4097 }); // not page-aligned
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    console.log(`refused: ${e.code} from ${e.request}`);
  }
} finally {
  mem.close(); // munmap
  gmem.close(); // the guest_memfd; it kept the VM alive until now
  vm.close();
  kvm.close();
}
