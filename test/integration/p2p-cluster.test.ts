// Several real libp2p agents in one process, over TCP on 127.0.0.1: an origin whose cache holds the whole
// image and agents with empty caches that read it through their BlockCache from each other.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, createHash } from 'node:crypto'
import { manifestFromFile, type Manifest } from '../../src/blockstack/manifest.js'
import { BlockCache, type Logger } from '../../src/blockstack/cache.js'
import { memoryPresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'
import type { BlockSource } from '../../src/blockstack/types.js'
import { identityFromSeed, type Identity } from '../../src/identity/key.js'
import { createP2PService, type P2PService, type P2PServiceInit } from '../../src/p2p/service.js'
import { generatePsk } from '../../src/p2p/psk.js'
import { encodeAdvert, imageTopic, summarize } from '../../src/p2p/advert.js'

const BLOCK = 64 * 1024

type GossipSubScores = ReturnType<P2PService['node']>['services']['pubsub'] & { getScore: (peerId: string) => number }
const IMAGE_ID = 'img'
const HEARTBEAT_MS = 500

interface Agent {
  identity: Identity
  service: P2PService
  cache?: BlockCache
}

interface Cluster {
  dir: string
  bytes: Buffer
  sha: string
  manifest: Manifest
  origin: Agent
  agents: Agent[]
  close: () => Promise<void>
}

async function makeImage (dir: string, sizeBytes: number): Promise<Buffer> {
  const bytes = randomBytes(sizeBytes)
  // Some zero blocks: never sent, holes in the caches.
  bytes.fill(0, 3 * BLOCK, 5 * BLOCK)
  await writeFile(join(dir, 'image.raw'), bytes)
  return bytes
}

function debugLogger (name: string): Logger {
  const t0 = Date.now()
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) => { console.log(`${Date.now() - t0} ${name} ${level} ${message} ${JSON.stringify(fields ?? {})}`) }
  return { info: log('info'), warn: log('warn'), error: log('error') }
}

function agentInit (identity: Identity, extra: Partial<P2PServiceInit>): P2PServiceInit {
  return {
    identity,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    heartbeatMs: HEARTBEAT_MS,
    ...(process.env.P2P_DEBUG !== undefined ? { logger: debugLogger(identity.peerId.slice(-4)) } : {}),
    topologyParams: { advertTimeoutMs: 4 * HEARTBEAT_MS, minParentHoldMs: 5 * HEARTBEAT_MS },
    ...extra
  }
}

async function cluster (options: { agents: number, sizeBytes: number, originChildLimit?: number, psk?: Uint8Array,
  sourceFor?: (i: number, real: BlockSource) => BlockSource }): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-p2p-'))
  const bytes = await makeImage(dir, options.sizeBytes)
  const originId = identityFromSeed(randomBytes(32))
  const manifest = await manifestFromFile({ imageId: IMAGE_ID, path: join(dir, 'image.raw'), blockSizeBytes: BLOCK, key: originId })
  const file = fileBlockSource(join(dir, 'image.raw'))
  const originCache = await BlockCache.open({ manifest, path: join(dir, 'origin.cache'), presence: memoryPresenceStore(), source: file })
  await originCache.ensure(Array.from({ length: manifest.blockCount }, (_, i) => i), { signal: AbortSignal.timeout(20_000) })
  await originCache.flush()
  assert.ok(originCache.isComplete())
  const origin: Agent = {
    identity: originId,
    service: createP2PService(agentInit(originId, { childLimit: options.originChildLimit ?? 1, psk: options.psk })),
    cache: originCache
  }
  origin.service.addImage(originCache)
  await origin.service.start()
  const bootstrap = origin.service.multiaddrs().filter(a => a.includes('127.0.0.1'))
  const agents: Agent[] = []
  for (let i = 0; i < options.agents; i++) {
    const identity = identityFromSeed(randomBytes(32))
    const service = createP2PService(agentInit(identity, { bootstrap, trustedKeys: [originId.publicKey], psk: options.psk }))
    await service.start()
    agents.push({ identity, service })
  }
  return {
    dir,
    bytes,
    sha: createHash('sha256').update(bytes).digest('hex'),
    manifest,
    origin,
    agents,
    async close () {
      for (const agent of [origin, ...agents]) {
        await agent.service.stop().catch(() => {})
        await agent.cache?.close().catch(() => {})
      }
      await file.close()
      await rm(dir, { recursive: true, force: true })
    }
  }
}

/** The agent fetches the manifest from peers, opens its cache on the peer source and serves it. */
async function join_ (c: Cluster, agent: Agent, i: number, sourceFor?: (i: number, real: BlockSource) => BlockSource): Promise<BlockCache> {
  const manifest = await agent.service.fetchManifest(IMAGE_ID, { signal: AbortSignal.timeout(10_000) })
  assert.equal(manifest.rootHex, c.manifest.rootHex)
  const source = sourceFor?.(i, agent.service.blockSource) ?? agent.service.blockSource
  const cache = await BlockCache.open({ manifest, path: join(c.dir, `agent${i}.cache`), presence: memoryPresenceStore(), source })
  agent.cache = cache
  agent.service.addImage(cache)
  return cache
}

/** Reads the whole image through the cache in 1 MiB reads, 4 at a time; returns its SHA-256. */
async function readAll (cache: BlockCache, onProgress?: (doneBytes: number) => void): Promise<string> {
  const size = cache.manifest.sizeBytes
  const chunk = 1024 * 1024
  const parts: Buffer[] = new Array(Math.ceil(size / chunk))
  let next = 0
  let done = 0
  const worker = async (): Promise<void> => {
    while (next < parts.length) {
      const i = next++
      const length = Math.min(chunk, size - i * chunk)
      parts[i] = Buffer.from(await cache.read(i * chunk, length, AbortSignal.timeout(60_000)))
      done += length
      onProgress?.(done)
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  return createHash('sha256').update(Buffer.concat(parts)).digest('hex')
}

async function waitUntil (what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setImmediate(resolve))
    await new Promise(resolve => setTimeout(resolve, 20)) // bounded polling of state
  }
}

test('p2p: 4 agents read the whole image from an origin and each other; the origin sends well under 2x', { timeout: 120_000 }, async () => {
  const c = await cluster({ agents: 4, sizeBytes: 24 * 1024 * 1024 })
  try {
    const caches = await Promise.all(c.agents.map(async (agent, i) => await join_(c, agent, i)))
    const shas = await Promise.all(caches.map(async cache => await readAll(cache)))
    for (const sha of shas) assert.equal(sha, c.sha)
    for (const cache of caches) await cache.flush()
    const originStatus = c.origin.service.status().images[IMAGE_ID]
    assert.equal(originStatus.depth, 0)
    assert.equal(originStatus.heldFraction, 1)
    assert.ok(originStatus.children.length <= 1, `origin child limit is 1, has ${originStatus.children.length}`)
    const sent = originStatus.bytesSent
    if (process.env.P2P_DEBUG !== undefined) {
      console.log(JSON.stringify({ origin: c.origin.service.peerId, originStatus, agents: c.agents.map(a => ({ id: a.service.peerId, ...a.service.status().images[IMAGE_ID], src: a.service.peerSource.stats })) }, null, 1))
    }
    assert.ok(sent < 1.5 * c.bytes.length, `origin sent ${sent} bytes for a ${c.bytes.length}-byte image`)
    let fromPeers = 0
    for (const agent of c.agents) {
      const s = agent.service.status().images[IMAGE_ID]
      assert.equal(s.heldFraction, 1)
      fromPeers += Object.entries(s.bytesReceivedByPeer).filter(([peer]) => peer !== c.origin.service.peerId).reduce((a, [, b]) => a + b, 0)
    }
    assert.ok(fromPeers > c.bytes.length, 'agents got most blocks from each other')
    // Once complete, every agent is a seed.
    await waitUntil('agents advertise depth 0', () => c.agents.every(a => a.service.status().images[IMAGE_ID].depth === 0))
  } finally {
    await c.close()
  }
})

test('p2p: killing a relay mid-read leaves every read completing with correct data', { timeout: 120_000 }, async () => {
  const c = await cluster({ agents: 4, sizeBytes: 24 * 1024 * 1024 })
  try {
    const caches = await Promise.all(c.agents.map(async (agent, i) => await join_(c, agent, i)))
    // The relay: the origin's only child.
    await waitUntil('origin has a child', () => c.origin.service.status().images[IMAGE_ID].children.length === 1)
    const relayId = c.origin.service.status().images[IMAGE_ID].children[0]
    const relayIndex = c.agents.findIndex(a => a.service.peerId === relayId)
    assert.ok(relayIndex >= 0)
    const others = caches.filter((_, i) => i !== relayIndex)
    let killed = false
    const reads = others.map(async cache => await readAll(cache, done => {
      if (!killed && done >= c.bytes.length / 4) {
        killed = true
        void c.agents[relayIndex].service.stop()
      }
    }))
    const shas = await Promise.all(reads)
    assert.ok(killed)
    for (const sha of shas) assert.equal(sha, c.sha)
  } finally {
    await c.close()
  }
})

test('p2p: a node with a wrong PSK cannot connect; the right PSK can', { timeout: 60_000 }, async () => {
  const psk = generatePsk()
  const c = await cluster({ agents: 1, sizeBytes: 1024 * 1024, psk })
  try {
    const wrong = createP2PService(agentInit(identityFromSeed(randomBytes(32)), { psk: generatePsk() }))
    const none = createP2PService(agentInit(identityFromSeed(randomBytes(32)), {}))
    await wrong.start()
    await none.start()
    try {
      const target = c.origin.service.multiaddrs()[0]
      await assert.rejects(wrong.node().dial((await import('@multiformats/multiaddr')).multiaddr(target), { signal: AbortSignal.timeout(5000) }))
      await assert.rejects(none.node().dial((await import('@multiformats/multiaddr')).multiaddr(target), { signal: AbortSignal.timeout(5000) }))
      assert.equal(wrong.status().peers.length, 0)
      // The agent with the right key joined through bootstrap and can fetch.
      const cache = await join_(c, c.agents[0], 0)
      assert.equal(await readAll(cache), c.sha)
    } finally {
      await wrong.stop()
      await none.stop()
    }
  } finally {
    await c.close()
  }
})

test('p2p: a garbage or inconsistent advert is rejected and costs the sender gossip score', { timeout: 60_000 }, async () => {
  const c = await cluster({ agents: 0, sizeBytes: 1024 * 1024 })
  const evilId = identityFromSeed(randomBytes(32))
  const evil = createP2PService(agentInit(evilId, { bootstrap: c.origin.service.multiaddrs() }))
  try {
    await evil.start()
    const pubsub = evil.node().services.pubsub
    pubsub.subscribe(imageTopic(IMAGE_ID))
    const originPubsub = c.origin.service.node().services.pubsub as unknown as GossipSubScores
    await waitUntil('evil is in the topic', () => originPubsub.getSubscribers(imageTopic(IMAGE_ID)).some(p => p.toString() === evilId.peerId) &&
      pubsub.getSubscribers(imageTopic(IMAGE_ID)).length > 0)
    const scoreBefore = originPubsub.getScore(evilId.peerId)
    // A seed advert (depth 0) that does not hold every block: inconsistent.
    const liar = encodeAdvert({
      imageId: IMAGE_ID, rootHex: c.manifest.rootHex, seq: 5, depth: 0, heldBlocks: 1, totalBlocks: c.manifest.blockCount,
      childCount: 0, childLimit: 8, uploadLoad: 0, manifestAvailable: true,
      summary: summarize(Uint8Array.of(1), c.manifest.blockCount),
      addrs: []
    })
    await pubsub.publish(imageTopic(IMAGE_ID), randomBytes(200))
    await pubsub.publish(imageTopic(IMAGE_ID), liar)
    // Both messages must be rejected: a count above 1 needs two rejections (counts only decay), so a validator
    // that let the liar through fails here, whatever the garbage did to the score.
    await waitUntil('both adverts rejected', () => ((originPubsub as any).dumpPeerScoreStats()[evilId.peerId]?.topics?.[imageTopic(IMAGE_ID)]?.invalidMessageDeliveries ?? 0) > 1)
    await waitUntil('score falls', () => originPubsub.getScore(evilId.peerId) < scoreBefore - 10)
    assert.equal(c.origin.service.status().images[IMAGE_ID].candidates, 0, 'nothing from the evil peer became a candidate')
  } finally {
    await evil.stop()
    await c.close()
  }
})

test('p2p: a peer that serves corrupt blocks is caught and banned; no corrupt byte reaches the reader', { timeout: 120_000 }, async () => {
  // Agent 0 gets the image from the origin, then serves corrupt data: its store lies about block contents.
  const c = await cluster({ agents: 2, sizeBytes: 4 * 1024 * 1024, originChildLimit: 0 })
  try {
    const good = await join_(c, c.agents[0], 0)
    assert.equal(await readAll(good), c.sha)
    await good.flush()
    // Swap agent 0's served store for a liar over the same cache.
    const liar = Object.create(good) as BlockCache
    liar.readBlock = async (index: number) => {
      const data = Buffer.from(await good.readBlock(index))
      data[0] ^= 0xff
      return data
    }
    c.agents[0].service.removeImage(IMAGE_ID)
    c.agents[0].service.addImage(liar)
    // The origin admits no child (limit 0), so agent 1's parent is the liar; the origin stays a fallback.
    const victim = await join_(c, c.agents[1], 1)
    await waitUntil('victim has the liar as a parent', () => c.agents[1].service.status().images[IMAGE_ID]?.parents.includes(c.agents[0].service.peerId), 15_000)
    const sha = await readAll(victim)
    assert.equal(sha, c.sha)
    const status = c.agents[1].service.status()
    assert.ok(status.banned.includes(c.agents[0].service.peerId), 'the liar is banned')
    assert.ok(!status.images[IMAGE_ID].parents.includes(c.agents[0].service.peerId))
    assert.ok(victim.stats().corruptBlocks >= 1)
  } finally {
    await c.close()
  }
})
