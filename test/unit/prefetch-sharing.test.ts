// Profile sharing, the bounded parts: adverts carry the profile's version, boots and size (and refuse odd
// values), and /vmthunder/profile/1 between two real libp2p nodes on loopback serves a profile, answers
// 'busy' to a peer that asks too often, 'unknown' for an image without one, and the client refuses a reply
// larger than it allows.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { decodeAdvert, encodeAdvert, summarize, type AdvertBody } from '../../src/p2p/advert.js'
import { createNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { createProfileServer, fetchProfileFrom, PROFILE_PROTOCOL } from '../../src/p2p/profile-protocol.js'
import { silentLogger } from '../../src/blockstack/cache.js'

const TOTAL = 16384

function advert (over: Partial<AdvertBody> = {}): AdvertBody {
  const bitmap = new Uint8Array(TOTAL / 8).fill(0xff)
  return {
    imageId: 'img', rootHex: 'cd'.repeat(32), seq: 7, depth: 0, heldBlocks: TOTAL, totalBlocks: TOTAL, childCount: 1, childLimit: 8,
    uploadLoad: 0.25, manifestAvailable: true, summary: summarize(bitmap, TOTAL), addrs: [], ...over
  }
}

test('adverts carry the profile version, boots and size; odd values are refused', { timeout: 10_000 }, () => {
  const plain = decodeAdvert(encodeAdvert(advert()))
  assert.equal(plain.profile, undefined)
  const withProfile = decodeAdvert(encodeAdvert(advert({ profile: { version: '0123456789abcdef', boots: 3, sizeBytes: 2393 } })))
  assert.deepEqual(withProfile.profile, { version: '0123456789abcdef', boots: 3, sizeBytes: 2393 })
  assert.throws(() => encodeAdvert(advert({ profile: { version: 'xyz', boots: 1, sizeBytes: 1 } })), RangeError)
  assert.throws(() => encodeAdvert(advert({ profile: { version: '0123456789abcdef', boots: 1, sizeBytes: 2 * 1024 * 1024 } })), RangeError)
  const bytes = Buffer.from(encodeAdvert(advert({ profile: { version: '0123456789abcdef', boots: 3, sizeBytes: 100 } })))
  const zeroBoots = Buffer.from(bytes); zeroBoots[bytes.length - 5] = 0
  assert.throws(() => decodeAdvert(zeroBoots), /no boots/)
  const huge = Buffer.from(bytes); huge.writeUInt32BE(0x7fffffff, bytes.length - 4)
  assert.throws(() => decodeAdvert(huge), /size/)
  assert.throws(() => decodeAdvert(bytes.subarray(0, bytes.length - 2)), { name: 'AdvertDecodeError' })
})

test('profile protocol: served, rate limited per peer, unknown images, bounded replies', { timeout: 30_000 }, async () => {
  const profile = randomBytes(5000)
  let now = 1_000_000
  const server = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const client = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  try {
    const profiles = createProfileServer({ lookup: id => id === 'img' ? profile : undefined, logger: silentLogger, nowMs: () => now })
    await server.handle(PROFILE_PROTOCOL, (stream, connection) => { void profiles.handle(stream, connection) })
    await client.dial(server.getMultiaddrs()[0])
    const signal = AbortSignal.timeout(10_000)
    assert.deepEqual(Buffer.from(await fetchProfileFrom(client, server.peerId, 'img', { signal })), profile)
    await assert.rejects(fetchProfileFrom(client, server.peerId, 'img', { signal }), /busy/)
    now += 1000
    await assert.rejects(fetchProfileFrom(client, server.peerId, 'other', { signal }), { name: 'ProfileUnavailableError' })
    now += 1000
    await assert.rejects(fetchProfileFrom(client, server.peerId, 'img', { signal, maxBytes: 1000 }))
    assert.equal(profiles.served(), 2)
  } finally {
    await client.stop()
    await server.stop()
  }
})
