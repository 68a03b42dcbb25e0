// kvm-gmem/guest through the published typings.
import { expectTypeOf } from 'vitest';
import type { Vcpu } from 'kvm-gmem';
import {
  bootGuest, GuestAssertionError, guestImage, replyUcall, runUntilUcall, runUntilUcallSync, type Ucall,
} from 'kvm-gmem/guest';

expectTypeOf(runUntilUcall).parameter(0).toEqualTypeOf<Vcpu>();
expectTypeOf(runUntilUcall).returns.toEqualTypeOf<Promise<Ucall>>();
expectTypeOf(runUntilUcallSync).returns.toEqualTypeOf<Ucall>();
expectTypeOf(replyUcall).returns.toBeVoid();
expectTypeOf(bootGuest).parameter(0).toEqualTypeOf<Vcpu>();
expectTypeOf(guestImage).toBeCallableWith('hello');
expectTypeOf(guestImage).returns.toEqualTypeOf<Uint8Array>();
expectTypeOf<GuestAssertionError>().toExtend<Error>();
// @ts-expect-error only the guest programs built with the addon have names
guestImage('no-such-guest');
