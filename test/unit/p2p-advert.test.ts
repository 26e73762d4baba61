import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import {
  decodeAdvert, encodeAdvert, holdProbability, imageIdFromTopic, imageTopic, summarize, validateAdvert,
  MAX_ADVERT_BYTES, type AdvertBody
} from '../../src/p2p/advert.js'
import { decodeClientFrame, decodeServerFrame, encodeBlocksFrame, encodeClientFrame, BlockStatus, FrameType } from '../../src/p2p/wire.js'
import { parsePsk, generatePsk } from '../../src/p2p/psk.js'

const TOTAL = 16384 // 1 GiB at 64 KiB

function bitmapWith (held: (i: number) => boolean, total = TOTAL): Uint8Array {
  const bits = new Uint8Array(Math.ceil(total / 8))
  for (let i = 0; i < total; i++) if (held(i)) bits[i >> 3] |= 1 << (i & 7)
  return bits
}

function advert (over: Partial<AdvertBody> = {}, held: (i: number) => boolean = i => i < 5000): AdvertBody {
  let heldBlocks = 0
  for (let i = 0; i < TOTAL; i++) if (held(i)) heldBlocks++
  return {
    imageId: 'debian-12',
    rootHex: 'ab'.repeat(32),
    seq: 1_700_000_000_000,
    depth: 2,
    heldBlocks,
    totalBlocks: TOTAL,
    childCount: 3,
    childLimit: 8,
    uploadLoad: 0.25,
    manifestAvailable: true,
    summary: summarize(bitmapWith(held), TOTAL),
    addrs: [multiaddr('/ip4/127.0.0.1/tcp/4001').bytes, multiaddr('/ip6/::1/tcp/4001').bytes],
    ...over
  }
}

test('advert: round trip, bounded size, summary tells what is probably held', { timeout: 5000 }, () => {
  const a = advert()
  const bytes = encodeAdvert(a)
  assert.ok(bytes.byteLength <= 400, `advert is ${bytes.byteLength} bytes`)
  const b = decodeAdvert(bytes)
  assert.deepEqual({ ...b, summary: undefined, addrs: undefined }, { ...a, summary: undefined, addrs: undefined })
  assert.equal(b.addrs.length, 2)
  assert.equal(holdProbability(b, 0), 1)
  assert.equal(holdProbability(b, 4000), 1)
  assert.equal(holdProbability(b, 9000), 0)
  assert.ok(holdProbability(b, 5000) > 0 && holdProbability(b, 5000) < 1, 'the boundary group is partly held')
  // A seed and a detached agent.
  const seed = decodeAdvert(encodeAdvert(advert({ depth: 0 }, () => true)))
  assert.equal(seed.depth, 0)
  assert.equal(holdProbability(seed, TOTAL - 1), 1)
  assert.equal(decodeAdvert(encodeAdvert(advert({ depth: null }))).depth, null)
  // A relay at its bound of sole children says so (a flag, no field); absent, the flag is off.
  assert.equal(decodeAdvert(encodeAdvert(advert({ soleFull: true }))).soleFull, true)
  assert.equal(decodeAdvert(encodeAdvert(advert())).soleFull, undefined)
  assert.equal(imageIdFromTopic(imageTopic('debian-12')), 'debian-12')
  assert.equal(imageIdFromTopic('/other/topic'), undefined)
})

test('advert: garbage, oversized and inconsistent adverts are rejected', { timeout: 5000 }, () => {
  const ctx = { topicImageId: 'debian-12' }
  for (let i = 0; i < 200; i++) {
    const verdict = validateAdvert(randomBytes(1 + (i * 7) % 700), ctx)
    assert.equal(verdict.ok, false)
  }
  assert.throws(() => decodeAdvert(new Uint8Array(MAX_ADVERT_BYTES + 1)), { name: 'AdvertDecodeError' })
  const good = encodeAdvert(advert())
  assert.throws(() => decodeAdvert(good.subarray(0, good.length - 3)), { name: 'AdvertDecodeError' })
  assert.throws(() => decodeAdvert(Uint8Array.from([...good, 0])), { name: 'AdvertDecodeError' })
  // A seed (depth 0) that does not hold every block.
  assert.throws(() => decodeAdvert(encodeAdvert(advert({ depth: 0 }))), /depth 0/)
  // heldBlocks that the summary contradicts.
  assert.throws(() => decodeAdvert(encodeAdvert(advert({ heldBlocks: 12000 }))), /summary/)
  // More held than the image has; more children than the limit.
  assert.throws(() => decodeAdvert(encodeAdvert(advert({ heldBlocks: TOTAL + 1 }))), { name: 'AdvertDecodeError' })
  assert.throws(() => decodeAdvert(encodeAdvert(advert({ childCount: 9 }))), /child/)
  // A flipped version byte.
  const bad = Uint8Array.from(good); bad[0] = 9
  assert.throws(() => decodeAdvert(bad), /version/)
  // Context: wrong topic, root differing from the known manifest, block count differing, stale seq.
  assert.equal(validateAdvert(good, { topicImageId: 'other' }).ok, false)
  assert.equal(validateAdvert(good, { topicImageId: 'debian-12', manifest: { rootHex: 'cd'.repeat(32), blockCount: TOTAL } }).ok, false)
  assert.equal(validateAdvert(good, { topicImageId: 'debian-12', manifest: { rootHex: 'ab'.repeat(32), blockCount: TOTAL - 1 } }).ok, false)
  const stale = validateAdvert(good, { topicImageId: 'debian-12', lastSeq: 1_700_000_000_000 })
  assert.equal(stale.ok, false)
  assert.equal(!stale.ok && stale.stale, true)
  const fine = validateAdvert(good, { topicImageId: 'debian-12', manifest: { rootHex: 'ab'.repeat(32), blockCount: TOTAL }, lastSeq: 5 })
  assert.equal(fine.ok, true)
})

test('advert: a lifetime travels in an extension; flags and extensions of later agents are ignored', { timeout: 5000 }, () => {
  const plain = encodeAdvert(advert())
  assert.equal(decodeAdvert(plain).lifetimeMs, undefined, 'no lifetime: the receiver keeps its own timeout')
  const lived = encodeAdvert(advert({ lifetimeMs: 45_000 }))
  assert.equal(lived.byteLength, plain.byteLength + 4, 'type, length, u16 seconds')
  assert.equal(decodeAdvert(lived).lifetimeMs, 45_000)
  assert.equal(decodeAdvert(encodeAdvert(advert({ lifetimeMs: 1500 }))).lifetimeMs, 2000, 'whole seconds, rounded up')
  assert.throws(() => encodeAdvert(advert({ lifetimeMs: 65_536_000 })), RangeError)
  // A later agent's flag bit and extension type: the rest of the advert still reads.
  const later = Buffer.concat([lived, Uint8Array.of(9, 3, 1, 2, 3)])
  later[1] |= 0x80
  const read = decodeAdvert(later)
  assert.equal(read.lifetimeMs, 45_000)
  assert.equal(read.heldBlocks, 5000)
  assert.equal(read.soleFull, undefined, 'an unknown flag bit is not read as a known one')
  // Malformed extensions are rejected.
  const fail = (bytes: Uint8Array, why: RegExp): void => { assert.throws(() => decodeAdvert(bytes), (err: Error) => err.name === 'AdvertDecodeError' && why.test(err.message)) }
  fail(Buffer.concat([plain, Uint8Array.of(9)]), /truncated extension header/)
  fail(Buffer.concat([plain, Uint8Array.of(9, 4, 1)]), /truncated extension 9/)
  fail(Buffer.concat([plain, Uint8Array.of(1, 1, 5)]), /lifetime of 1 bytes/)
  fail(Buffer.concat([plain, Uint8Array.of(1, 2, 0, 0)]), /lifetime of 0 s/)
  fail(Buffer.concat([lived, Uint8Array.of(1, 2, 0, 5)]), /two lifetimes/)
})

test('wire: request and response frames round trip; malformed frames throw', { timeout: 5000 }, () => {
  const root = randomBytes(32)
  const get = decodeClientFrame(encodeClientFrame({ type: FrameType.Get, reqId: 7, priority: 1, root, indexes: [1, 5, 9] }))
  assert.deepEqual(get, { type: FrameType.Get, reqId: 7, priority: 1, root: new Uint8Array(root), indexes: [1, 5, 9] })
  assert.throws(() => encodeClientFrame({ type: FrameType.Get, reqId: 1, priority: 0, root, indexes: new Array(257).fill(0) }))
  assert.throws(() => decodeClientFrame(randomBytes(3)), { name: 'WireDecodeError' })
  assert.throws(() => decodeClientFrame(Uint8Array.of(9, 0, 0, 0, 1)), { name: 'WireDecodeError' })
  // ADMIT: an older agent's 38 bytes (one parent, not attaching), or with the parent count and flags.
  const legacy = encodeClientFrame({ type: FrameType.Admit, reqId: 4, root, leave: false })
  assert.equal(legacy.byteLength, 38)
  assert.deepEqual(decodeClientFrame(legacy), { type: FrameType.Admit, reqId: 4, root: new Uint8Array(root), leave: false })
  const admit = encodeClientFrame({ type: FrameType.Admit, reqId: 5, root, leave: false, parentCount: 3, attaching: true })
  assert.deepEqual(decodeClientFrame(admit), { type: FrameType.Admit, reqId: 5, root: new Uint8Array(root), leave: false, parentCount: 3, attaching: true })
  assert.throws(() => encodeClientFrame({ type: FrameType.Admit, reqId: 5, root, leave: false, parentCount: 0 }), RangeError)
  const noParents = Buffer.from(admit); noParents[38] = 0
  assert.throws(() => decodeClientFrame(noParents), { name: 'WireDecodeError' })
  const unknownFlag = Buffer.from(admit); unknownFlag[39] = 2
  assert.throws(() => decodeClientFrame(unknownFlag), { name: 'WireDecodeError' })
  assert.throws(() => decodeClientFrame(admit.subarray(0, 39)), { name: 'WireDecodeError' })
  const a = randomBytes(1000)
  const b = randomBytes(64 * 1024)
  const frame = encodeBlocksFrame(3, true, [{ index: 1, status: BlockStatus.Data, data: a }, { index: 2, status: BlockStatus.NotPresent }, { index: 3, status: BlockStatus.Data, data: b }])
  const decoded = decodeServerFrame(frame, 1 << 20)
  assert.equal(decoded.type, FrameType.Blocks)
  if (decoded.type !== FrameType.Blocks) return
  assert.equal(decoded.final, true)
  assert.deepEqual(decoded.entries.map(e => [e.index, e.status]), [[1, 0], [2, 1], [3, 0]])
  assert.deepEqual(Buffer.from(decoded.entries[2].data as Uint8Array), b)
  assert.throws(() => decodeServerFrame(frame.subarray(0, frame.byteLength - 1), 1 << 20), { name: 'WireDecodeError' })
  assert.throws(() => decodeServerFrame(frame, 1000), /block of/)
})

test('psk: the swarm.key format is checked', { timeout: 5000 }, () => {
  const key = generatePsk()
  assert.deepEqual(parsePsk(key).subarray(0, 30), key.subarray(0, 30))
  assert.throws(() => parsePsk(new TextEncoder().encode('/key/swarm/psk/1.0.0/\n/base16/\nabc')), { name: 'PskFormatError' })
  assert.throws(() => parsePsk(randomBytes(95)), { name: 'PskFormatError' })
})
