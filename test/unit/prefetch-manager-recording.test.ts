// PrefetchManager's boot recordings in virtual time: a VM that probes its disk, then runs its kernel for a
// while without reading (18.4 s in the Debian 12 trace under TCG), is still booting, and its boot is learned.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { PrefetchManager, RECORDING_QUIET_MS, MIN_RECORDING_ENTRIES, RECORDING_START_QUIET_FACTOR } from '../../src/daemon/prefetch-manager.js'
import type { Image } from '../../src/blockstack/images.js'
import { encodeProfile, finalizeProfile } from '../../src/prefetch/profile.js'
import type { NbdExport } from '../../src/blockstack/types.js'
import type { DaemonLogger } from '../../src/daemon/logger.js'

const BLOCK = 64 * 1024
const BLOCKS = 4096

const quiet: DaemonLogger = { debug () {}, info () {}, warn () {}, error () {}, child: () => quiet }

/** Just what the manager touches of an image whose cache is complete (so no prefetcher runs: recordings only). */
function fakeImage (imageId: string): Image {
  return {
    record: { imageId, origin: false },
    manifest: { imageId, blockCount: BLOCKS, blockSizeBytes: BLOCK, sizeBytes: BLOCKS * BLOCK, rootHex: 'ab'.repeat(32), zeroBlocks: new Uint8Array(BLOCKS / 8) },
    cache: {
      onBlocksAdded: () => () => {},
      isComplete: () => true,
      hasLocal: () => true,
      stats: () => ({ fetchedBytes: 0, prefetchedBytes: 0 })
    }
  } as unknown as Image
}

function setup (): { manager: PrefetchManager, exp: NbdExport, clock: { ms: number }, saved: string[] } {
  const clock = { ms: 1_000_000 }
  const saved: string[] = []
  const manager = new PrefetchManager({
    db: { get: async () => undefined, put: async (key) => { saved.push(key) }, del: async () => {} },
    logger: quiet,
    enabled: true,
    rateBytesPerSec: null,
    idleLinkFraction: 0.5,
    linkBytesPerSec: 100e6,
    now: () => clock.ms
  })
  const inner: NbdExport = { name: 'img', description: '', sizeBytes: BLOCKS * BLOCK, read: async (_o, length) => new Uint8Array(length) }
  return { manager, exp: inner, clock, saved }
}

/** A boot's first touches, 20 ms apart (enough to be a boot), then the recording quiet and a heartbeat. */
async function bootThenQuiet (manager: PrefetchManager, wrapped: NbdExport, clock: { ms: number }, signal: AbortSignal): Promise<void> {
  for (let b = 1; b <= MIN_RECORDING_ENTRIES + 8; b++) {
    clock.ms += 20
    await wrapped.read(b * 7 * BLOCK, 4096, signal)
  }
  clock.ms += RECORDING_QUIET_MS
  await manager.heartbeat()
}

test('a boot quiet for longer than the recording quiet before its first real reads is still booting, and is learned', { timeout: 10_000 }, async () => {
  const { manager, exp, clock, saved } = setup()
  await manager.attach(fakeImage('img'))
  manager.instanceCreated('vm', 'img')
  const wrapped = manager.wrapExport('img', exp)
  const signal = new AbortController().signal
  // QEMU probes the disk, then the guest runs its kernel and initrd for 18.4 s without a read.
  await wrapped.read(0, 512, signal)
  clock.ms += 18_400
  await manager.heartbeat()
  assert.equal(manager.booting('img'), 1, 'the recording outlives the usual quiet while it has too few first touches to be a boot')
  // The root file system is mounted: the boot reads its blocks.
  await bootThenQuiet(manager, wrapped, clock, signal)
  assert.equal(manager.booting('img'), 0, 'a boot quiet for the usual time has ended')
  assert.deepEqual(saved, ['img'], 'and its profile was stored')
})

test('a connection that only probes the disk stops counting as a boot after the longer quiet', { timeout: 10_000 }, async () => {
  const { manager, exp, clock, saved } = setup()
  await manager.attach(fakeImage('img'))
  manager.instanceCreated('vm', 'img')
  const wrapped = manager.wrapExport('img', exp)
  await wrapped.read(0, 512, new AbortController().signal)
  clock.ms += RECORDING_QUIET_MS * RECORDING_START_QUIET_FACTOR - 1
  await manager.heartbeat()
  assert.equal(manager.booting('img'), 1)
  clock.ms += 1
  await manager.heartbeat()
  assert.equal(manager.booting('img'), 0, 'bounded: peers are not held back for ever by a VM that never boots')
  assert.deepEqual(saved, [], 'a probe is not a boot profile')
})

test('attach takes the stored profile its caller started reading early, and otherwise reads it itself', { timeout: 10_000 }, async () => {
  const image = fakeImage('img')
  const profile = finalizeProfile({
    imageId: 'img', rootHex: image.manifest.rootHex, blockSizeBytes: BLOCK, blockCount: BLOCKS, boots: 3,
    entries: [{ block: 5, tMs: 0, confidence: 1 }, { block: 9, tMs: 40, confidence: 1 }]
  })
  const bytes = encodeProfile(profile)
  const gets: string[] = []
  const make = (): PrefetchManager => new PrefetchManager({
    db: { get: async (key) => { gets.push(key); return bytes }, put: async () => {}, del: async () => {} },
    logger: quiet, enabled: true, rateBytesPerSec: null, idleLinkFraction: 0.5, linkBytesPerSec: 100e6, now: () => 1_000_000
  })
  // Started by the caller while the image was installed (daemon.ts installFetched): attach reads nothing more.
  const early = make()
  const stored = early.storedProfile('img')
  assert.deepEqual(gets, ['img'])
  await early.attach(image, stored)
  assert.deepEqual(gets, ['img'], 'one read of the stored profile')
  assert.equal(early.exportProfile('img')?.boots, 3)
  // Without one (an image loaded at start), attach reads it.
  const late = make()
  await late.attach(fakeImage('img'))
  assert.deepEqual(gets, ['img', 'img'])
  assert.equal(late.exportProfile('img')?.version, profile.version)
})

test('an instance created and an export opened between register and attach are counted, recorded and learned', { timeout: 10_000 }, async () => {
  // A new image's instance.create answers once the image is installed and registered here; the attach (its
  // stored profile, its prefetcher) follows in the next turn of the event loop (daemon.ts installFetched).
  const { manager, exp, clock, saved } = setup()
  const image = fakeImage('img')
  manager.register(image)
  manager.instanceCreated('vm', 'img')
  assert.equal(manager.booting('img'), 1, 'the instance is counted before the attach')
  const wrapped = manager.wrapExport('img', exp)
  assert.notEqual(wrapped, exp, 'its export is wrapped (its reads are noted and recorded)')
  const signal = new AbortController().signal
  await wrapped.read(0, 512, signal)
  await manager.attach(image)
  await manager.attach(image) // a second attach does nothing
  assert.equal(manager.booting('img'), 1, 'the attach keeps the instance and its recording')
  await bootThenQuiet(manager, wrapped, clock, signal)
  assert.equal(manager.booting('img'), 0)
  assert.deepEqual(saved, ['img'], 'the boot read through the export opened before the attach was learned')
})
