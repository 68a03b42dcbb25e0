// kvm-gmem/ipc through the published typings.
import { expectTypeOf } from 'vitest';
import { FdChannel, FdListener, MAX_FDS, type ReceivedMessage } from 'kvm-gmem/ipc';

expectTypeOf<typeof FdChannel.pair>().returns.toEqualTypeOf<[FdChannel, FdChannel]>();
expectTypeOf<typeof FdChannel.listen>().returns.toEqualTypeOf<FdListener>();
expectTypeOf<typeof FdChannel.connect>().returns.toEqualTypeOf<Promise<FdChannel>>();
expectTypeOf<FdChannel['receive']>().returns.toEqualTypeOf<Promise<ReceivedMessage>>();
expectTypeOf<FdListener['accept']>().returns.toEqualTypeOf<Promise<FdChannel>>();
expectTypeOf<ReceivedMessage>().toExtend<Disposable>();
expectTypeOf(MAX_FDS).toEqualTypeOf<number>();

// @ts-expect-error FdChannel's constructor is private: FdChannel.pair(), connect(), fromFd()
new FdChannel(3);
// @ts-expect-error an FdListener comes from FdChannel.listen()
new FdListener(Symbol(), 3, '/tmp/x', 1n);
