// The gossip mesh the agents run (src/p2p/gossip-params.ts), on real libp2p nodes over TCP on 127.0.0.1: each
// agent's mesh holds Dlo..Dhi topic peers (what it forwards to), fewer than all of them, and a message reaches
// every subscriber exactly once.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createNode, type P2PNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { CONNECTION_PING_INTERVAL_MS, GOSSIP_MESH } from '../../src/p2p/gossip-params.js'

const TOPIC = '/vmthunder/test/gossip-mesh'
const NODES = 8

/** Resolves once `check()` holds, re-checked on each of the node's `event`s; bounded by the signal. */
async function until (node: P2PNode, event: 'subscription-change' | 'gossipsub:heartbeat', check: () => boolean, signal: AbortSignal): Promise<void> {
  if (check()) return
  const pubsub = node.services.pubsub as unknown as EventTarget
  await new Promise<void>((resolve, reject) => {
    const onEvent = (): void => { if (check()) done() }
    const onAbort = (): void => { done(new Error(`waiting for ${event}: ${String(signal.reason)}`)) }
    const done = (err?: Error): void => {
      pubsub.removeEventListener(event, onEvent)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve(); else reject(err)
    }
    pubsub.addEventListener(event, onEvent)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

test('each agent forwards to a mesh of Dlo..Dhi peers, not to every topic peer, and every subscriber gets a message once', { timeout: 60_000 }, async () => {
  const nodes: P2PNode[] = []
  try {
    for (let i = 0; i < NODES; i++) nodes.push(await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] }))
    const signal = AbortSignal.timeout(30_000)
    // Every pair connected: the publisher has NODES - 1 topic peers, more than the mesh degree.
    for (let i = 0; i < NODES; i++) {
      for (let j = i + 1; j < NODES; j++) await nodes[i].dial(nodes[j].getMultiaddrs()[0], { signal })
    }
    const received = nodes.map(() => 0)
    let allIn: () => void = () => {}
    const allReceived = new Promise<void>((resolve, reject) => {
      allIn = resolve
      signal.addEventListener('abort', () => { reject(new Error(`not every subscriber got the message: ${received.join(',')}`)) }, { once: true })
    })
    nodes.forEach((node, i) => {
      node.services.pubsub.subscribe(TOPIC)
      node.services.pubsub.addEventListener('message', evt => {
        if (evt.detail.topic !== TOPIC) return
        received[i]++
        if (received.slice(1).every(n => n > 0)) allIn()
      })
    })
    await Promise.all(nodes.map(async node => {
      await until(node, 'subscription-change', () => node.services.pubsub.getSubscribers(TOPIC).length === NODES - 1, signal)
    }))
    // Peers' GRAFTs fill a mesh past Dhi at first; each agent's own heartbeat prunes it back.
    const meshOf = (node: P2PNode): number => (node.services.pubsub as unknown as { getMeshPeers: (topic: string) => string[] }).getMeshPeers(TOPIC).length

    // What an agent forwards a message to: at most Dhi peers, fewer than its NODES - 1 topic peers.
    for (const node of nodes) await until(node, 'gossipsub:heartbeat', () => meshOf(node) >= GOSSIP_MESH.Dlo && meshOf(node) <= GOSSIP_MESH.Dhi, signal)
    const result = await nodes[0].services.pubsub.publish(TOPIC, randomBytes(600))
    // The publisher itself floods its own message to every topic peer (see gossip-params.ts for why).
    assert.equal(result.recipients.length, NODES - 1)

    await allReceived
    const others = received.slice(1)
    assert.deepEqual(others, others.map(() => 1), 'every subscriber got the message, once')
    assert.equal(received[0], 0, 'the publisher does not deliver its own message to itself')
  } finally {
    await Promise.all(nodes.map(async node => { await node.stop() }))
  }
})

test("libp2p's connection monitor pings each connection at the interval of gossip-params.ts", { timeout: 30_000 }, async () => {
  const node = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  try {
    // Internal field of libp2p's ConnectionMonitor (libp2p 3.x): the interval it was built with.
    const monitor = (node as unknown as { components: { connectionMonitor?: { pingIntervalMs?: number } } }).components.connectionMonitor
    assert.equal(monitor?.pingIntervalMs, CONNECTION_PING_INTERVAL_MS)
  } finally {
    await node.stop()
  }
})
