// Swarm read-ahead's wire pieces: the advert's `booting` field (sent only while the sender boots, bounded,
// validated) and the live profile request of /vmthunder/profile/1 (served by the same server, its own rate limit).

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { multiaddr } from '@multiformats/multiaddr'
import { decodeAdvert, encodeAdvert, summarize, MAX_ADVERT_BYTES, type AdvertBody } from '../../src/p2p/advert.js'
import { AdvertDecodeError } from '../../src/p2p/errors.js'
import { randomBytes } from 'node:crypto'
import { createNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { silentLogger } from '../../src/blockstack/cache.js'
import {
  createLiveProfileFetcher, createProfileServer, fetchProfileFrom, PROFILE_PROTOCOL, LIVE_FETCH_INTERVAL_MS, LIVE_PROFILE_SERVE_INTERVAL_MS
} from '../../src/p2p/profile-protocol.js'

const TOTAL = 16384

function advert (over: Partial<AdvertBody> = {}): AdvertBody {
  return {
    imageId: 'x'.repeat(64),
    rootHex: 'cd'.repeat(32),
    seq: 1_700_000_000_000,
    depth: 1,
    heldBlocks: 0,
    totalBlocks: TOTAL,
    childCount: 0,
    childLimit: 8,
    uploadLoad: 0,
    manifestAvailable: true,
    summary: summarize(new Uint8Array(TOTAL / 8), TOTAL),
    addrs: [1, 2, 3, 4].map(i => multiaddr(`/ip6/2001:db8::${i}/tcp/65535`).bytes),
    profile: { version: '0123456789abcdef', boots: 3, sizeBytes: 2393 },
    ...over
  }
}

test('advert booting: round trip; absent when 0 (same bytes as before the field); bounded; the largest advert fits', () => {
  const plain = encodeAdvert(advert())
  assert.deepEqual(encodeAdvert(advert({ booting: 0 })), plain, 'not booting: the advert older agents know')
  assert.equal(decodeAdvert(plain).booting, undefined)
  const booting = encodeAdvert(advert({ booting: 2 }))
  assert.equal(booting.byteLength, plain.byteLength + 1)
  assert.ok(booting.byteLength <= MAX_ADVERT_BYTES, `${booting.byteLength} bytes`)
  assert.equal(decodeAdvert(booting).booting, 2)
  // With the lifetime too, and four addresses of the longest kind an advert carries.
  const largest = encodeAdvert(advert({ booting: 2, lifetimeMs: 180_000, addrs: [1, 2, 3, 4].map(() => new Uint8Array(64)) }))
  assert.ok(largest.byteLength <= MAX_ADVERT_BYTES, `${largest.byteLength} bytes`)
  assert.equal(decodeAdvert(encodeAdvert(advert({ booting: 1000 }))).booting, 255, 'saturates at one byte')
  assert.equal(decodeAdvert(encodeAdvert(advert({ booting: 1, profile: undefined }))).booting, 1)
  assert.throws(() => encodeAdvert(advert({ booting: -1 })), RangeError)
  assert.throws(() => encodeAdvert(advert({ booting: 1.5 })), RangeError)
})

test('advert booting: a flag with a zero count, a missing byte or an extra byte is rejected', () => {
  const booting = encodeAdvert(advert({ booting: 3 }))
  const zero = Uint8Array.from(booting)
  zero[zero.length - 1] = 0
  assert.throws(() => decodeAdvert(zero), (err: Error) => err instanceof AdvertDecodeError && /no boots/.test(err.message))
  assert.throws(() => decodeAdvert(booting.subarray(0, booting.length - 1)), AdvertDecodeError)
  const plain = encodeAdvert(advert())
  const extra = new Uint8Array(plain.length + 1)
  extra.set(plain)
  extra[plain.length] = 1
  assert.throws(() => decodeAdvert(extra), /truncated extension/)
})

test('live profiles over /vmthunder/profile/1: own rate limit, and a fetcher that is bounded and adopts what it gets', { timeout: 30_000 }, async () => {
  const learned = randomBytes(3000)
  let live: Uint8Array | undefined = randomBytes(700)
  let now = 5_000_000
  const server = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const client = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const stop = new AbortController()
  try {
    const profiles = createProfileServer({ lookup: (id, isLive) => id !== 'img' ? undefined : isLive ? live : learned, logger: silentLogger, nowMs: () => now })
    await server.handle(PROFILE_PROTOCOL, (stream, connection) => { void profiles.handle(stream, connection) })
    await client.dial(server.getMultiaddrs()[0])
    const signal = AbortSignal.timeout(10_000)
    assert.deepEqual(Buffer.from(await fetchProfileFrom(client, server.peerId, 'img', { signal, live: true })), Buffer.from(live))
    // The learned profile has its own limit: a live answer does not make it 'busy', and the reverse.
    assert.deepEqual(Buffer.from(await fetchProfileFrom(client, server.peerId, 'img', { signal })), learned)
    await assert.rejects(fetchProfileFrom(client, server.peerId, 'img', { signal, live: true }), { name: 'ProfileBusyError' })
    now += LIVE_PROFILE_SERVE_INTERVAL_MS
    live = undefined // the boot is over: nothing live to serve
    await assert.rejects(fetchProfileFrom(client, server.peerId, 'img', { signal, live: true }), { name: 'ProfileUnavailableError' })

    live = randomBytes(900)
    now += LIVE_PROFILE_SERVE_INTERVAL_MS
    const adopted: Uint8Array[] = []
    let wants = true
    const fetcher = createLiveProfileFetcher({
      node: () => client,
      provider: { local: () => undefined, adopt: async () => false, adoptLive: (_id, bytes) => { adopted.push(bytes); return true }, wantsLive: () => wants },
      logger: silentLogger,
      signal: stop.signal,
      nowMs: () => now
    })
    const peer = server.peerId.toString()
    fetcher.maybeFetch('img', [peer])
    fetcher.maybeFetch('img', [peer]) // one fetch per image at a time: no second start
    await waitFor(() => adopted.length === 1)
    assert.deepEqual(Buffer.from(adopted[0]), Buffer.from(live))
    fetcher.maybeFetch('img', [peer])
    assert.equal(fetcher.fetched(), 1, 'no start within the interval')
    now += LIVE_FETCH_INTERVAL_MS
    wants = false
    fetcher.maybeFetch('img', [peer])
    fetcher.maybeFetch('img', [])
    assert.equal(fetcher.fetched(), 1, 'not wanted (a learned profile exists), or nobody boots: no fetch')
    wants = true
    fetcher.maybeFetch('img', [peer])
    await waitFor(() => adopted.length === 2)
    assert.equal(fetcher.fetched(), 2)
  } finally {
    stop.abort()
    await client.stop()
    await server.stop()
  }
})

/** Bounded wait on a condition that a network answer makes true (no fixed sleep). */
async function waitFor (done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise(resolve => setTimeout(resolve, 10))
  assert.ok(done(), 'condition not met within 5 s')
}
