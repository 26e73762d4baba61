// Several real libp2p agents in one process, over TCP on 127.0.0.1: an origin whose cache holds the whole
// image and agents with empty caches that read it through their BlockCache from each other.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { identityFromSeed } from '../../src/identity/key.js'
import { createP2PService } from '../../src/p2p/service.js'
import { generatePsk } from '../../src/p2p/psk.js'
import { encodeAdvert, imageTopic, summarize } from '../../src/p2p/advert.js'
import { IMAGE_ID, agentInit, cluster, join_, readAll, type GossipSubScores } from '../helpers/p2p-cluster.js'

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
    // Blocks travelled on data channels (the default): every agent used one, the origin served one.
    for (const agent of c.agents) assert.ok(agent.service.status().dataChannels.outbound >= 1, 'agent on a data channel')
    assert.ok(c.origin.service.status().dataChannels.inbound >= 1, 'origin serves a data channel')
    // Once complete, every agent is a seed.
    await waitUntil('agents advertise depth 0', () => c.agents.every(a => a.service.status().images[IMAGE_ID].depth === 0))
  } finally {
    await c.close()
  }
})

test('p2p: where no data channel is offered, blocks stay on the libp2p stream (the origin offers none; agents do)', { timeout: 120_000 }, async () => {
  const c = await cluster({ agents: 3, sizeBytes: 8 * 1024 * 1024, originInit: { dataChannel: false } })
  try {
    const caches = await Promise.all(c.agents.map(async (agent, i) => await join_(c, agent, i)))
    const shas = await Promise.all(caches.map(async cache => await readAll(cache)))
    for (const sha of shas) assert.equal(sha, c.sha)
    const origin = c.origin.service.status()
    assert.deepEqual(origin.dataChannels, { port: null, outbound: 0, inbound: 0 })
    assert.ok(origin.images[IMAGE_ID].bytesSent > 0, 'the origin served blocks on its stream')
    for (const agent of c.agents) assert.ok(agent.service.status().dataChannels.port !== null)
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

test('p2p: a new subscriber gets the origin\'s advert at once, not at its keep-alive (its subscription can arrive before gossip can answer it)', { timeout: 60_000 }, async () => {
  // The origin's keep-alive is 10 minutes: only the advert that answers the subscription makes the origin a
  // candidate of the agent. Before the fix that advert often went out before gossipsub had a stream to the new
  // subscriber, and the agent waited for the keep-alive.
  const c = await cluster({ agents: 1, sizeBytes: 1024 * 1024, originInit: { advertPolicy: { keepAliveMs: 600_000 } } })
  try {
    const agent = c.agents[0]
    await waitUntil('the agent is connected to the origin', () => agent.service.status().peers.includes(c.origin.service.peerId))
    await join_(c, agent, 0)
    await waitUntil('the origin\'s advert to reach the agent', () => (agent.service.status().images[IMAGE_ID]?.candidates ?? 0) >= 1, 20_000)
  } finally {
    await c.close()
  }
})

test('p2p: a new agent gets the manifest from a connected peer before any advert names a holder', { timeout: 60_000 }, async () => {
  // The agent asks the connected origin at once, before the advert that answers its subscription can arrive (that
  // takes the subscription's round trip and the origin's advert interval, and in a fresh wave up to a second).
  // No catalog here (it would have fetched the manifest ahead): this is the path without one.
  const c = await cluster({ agents: 1, sizeBytes: 1024 * 1024, agentInitFor: () => ({ catalogManifests: 0 }) })
  try {
    const agent = c.agents[0]
    await waitUntil('the agent is connected to the origin', () => agent.service.status().peers.includes(c.origin.service.peerId))
    const manifest = await agent.service.fetchManifest(IMAGE_ID, { signal: AbortSignal.timeout(20_000) })
    assert.equal(manifest.rootHex, c.manifest.rootHex)
    assert.deepEqual(agent.service.status().manifestsFound, { advertised: 0, direct: 1, catalog: 0 })
  } finally {
    await c.close()
  }
})

test('p2p: an agent fetches the manifests of its trusted origin\'s catalog ahead; a create takes one without asking; an untrusting agent fetches none', { timeout: 60_000 }, async () => {
  // Agent 1 trusts no origin (its own key only): the origin's catalog reaches it but is not acted on.
  const c = await cluster({ agents: 2, sizeBytes: 1024 * 1024, agentInitFor: i => i === 1 ? { trustedKeys: [] } : {} })
  try {
    const [trusting, untrusting] = c.agents
    await waitUntil('the origin\'s catalog and the manifest it names to reach the trusting agent', () => trusting.service.status().catalog.held === 1, 20_000)
    assert.equal(trusting.service.status().catalog.fetched, 1)
    const manifest = await trusting.service.fetchManifest(IMAGE_ID, { signal: AbortSignal.timeout(20_000) })
    assert.equal(manifest.rootHex, c.manifest.rootHex)
    assert.deepEqual(trusting.service.status().manifestsFound, { advertised: 0, direct: 0, catalog: 1 })
    assert.deepEqual({ ...trusting.service.status().catalog, received: 0 }, { received: 0, ignored: 0, fetched: 1, failed: 0, held: 0, used: 1 })
    // The untrusting agent got the same catalog, ignored it and fetched nothing.
    await waitUntil('the origin\'s catalog to reach the untrusting agent', () => untrusting.service.status().catalog.ignored >= 1, 20_000)
    assert.deepEqual({ ...untrusting.service.status().catalog, ignored: 1 }, { received: 0, ignored: 1, fetched: 0, failed: 0, held: 0, used: 0 })
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
